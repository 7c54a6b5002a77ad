/**
 * Child processes that fault suites kill on purpose: each one leads its own process group (so a redis-server's
 * AOF-rewrite child or anything else it forks dies with it), writes stdout+stderr to a log file, and is registered
 * with bench/lib/proc.ts so that `stopAll()` ends it on every way out. Signals go to the group by pid, never by
 * name. Every pid is also written to a pid file with the pid of the process that started it, so a run that was
 * itself killed -9 can be cleaned up by the next one: only pids whose starter is gone and whose command line is
 * still exactly the one recorded (a reused pid is left alone, and so is anything a live run owns).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { tmpdir, userInfo } from 'node:os'
import { dirname, join } from 'node:path'
import { track } from '../../bench/lib/proc.ts'

export interface GroupProcess {
  name: string
  child: ChildProcess
  pid: number
  logPath: string
  /** Resolves once the process has exited (with its code or signal). */
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  alive: () => boolean
  /** Sends `signal` to the whole process group (no-op once the leader is gone and reaped). */
  signal: (signal: NodeJS.Signals) => void
  /** SIGTERM to the group, SIGKILL after `graceMs`; resolves once the leader has exited. */
  stop: (graceMs?: number) => Promise<void>
}

const PID_FILE = join(tmpdir(), `kg-fault-pids-${userInfo().uid}.json`)
interface PidEntry { pid: number, cmdline: string, owner: number, ownerCmdline: string }
const OWNER_CMDLINE = cmdline(process.pid) ?? ''

function cmdline (pid: number): string | null {
  try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8') } catch { return null }
}

function ownerAlive (e: PidEntry): boolean {
  return cmdline(e.owner) === e.ownerCmdline
}

function readPids (): PidEntry[] {
  try { return JSON.parse(readFileSync(PID_FILE, 'utf8')) as PidEntry[] } catch { return [] }
}

/** Written whole and renamed into place: another run (or a test file) may be reading it at the same moment. */
function writePids (entries: PidEntry[]): void {
  const tmp = `${PID_FILE}.${process.pid}.tmp`
  try {
    writeFileSync(tmp, JSON.stringify(entries))
    renameSync(tmp, PID_FILE)
  } catch {}
}

/**
 * Kills the groups of processes an earlier run recorded and never stopped (it was killed itself). A pid is only
 * touched when its /proc command line is byte for byte the one recorded, so a reused pid is left alone.
 */
export function reapOrphans (): string[] {
  const reaped: string[] = []
  const kept: PidEntry[] = []
  for (const e of readPids()) {
    if (ownerAlive(e)) { kept.push(e); continue }
    if (cmdline(e.pid) !== e.cmdline) continue
    try {
      process.kill(-e.pid, 'SIGKILL')
      reaped.push(`${e.pid} ${e.cmdline.split('\0').join(' ').slice(0, 80)}`)
    } catch {}
  }
  writePids(kept)
  return reaped
}

function exitedNow (child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null
}

/** Starts `command args` in its own process group with stdout+stderr appended to `logPath`. */
export function spawnGroup (name: string, command: string, args: string[], opts: {
  logPath: string
  cwd?: string
  env?: Record<string, string>
}): GroupProcess {
  mkdirSync(dirname(opts.logPath), { recursive: true })
  const fd = openSync(opts.logPath, 'a')
  let child: ChildProcess
  try {
    child = spawn(command, args, {
      cwd: opts.cwd,
      env: opts.env ?? { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp' },
      stdio: ['ignore', fd, fd],
      // Its own group: signals reach what it forks, and a Ctrl-C meant for us does not reach it before we act.
      detached: true
    })
  } finally {
    closeSync(fd)
  }
  if (child.pid === undefined) throw new Error(`${name}: could not start ${command}`)
  const pid = child.pid
  const exited = once(child, 'exit')
    .then(([code, signal]) => ({ code: code as number | null, signal: signal as NodeJS.Signals | null }))
  let reaped = false
  exited.then(() => {
    // The leader is gone; whatever it forked may still be in the group (an AOF rewrite), so end that too, at once,
    // before the pid could ever be reused.
    try { process.kill(-pid, 'SIGKILL') } catch {}
    reaped = true
    writePids(readPids().filter(e => e.pid !== pid))
  }).catch(() => {})
  // Recorded after exec, and again later: redis-server rewrites its own process title once it is up.
  const record = () => {
    const line = cmdline(pid)
    const entry = { pid, cmdline: line ?? '', owner: process.pid, ownerCmdline: OWNER_CMDLINE }
    if (line !== null && !reaped) writePids([...readPids().filter(e => e.pid !== pid), entry])
  }
  setTimeout(record, 200).unref()
  setTimeout(record, 1500).unref()
  const signal = (sig: NodeJS.Signals) => {
    if (reaped) return
    try { process.kill(-pid, sig) } catch { try { child.kill(sig) } catch {} }
  }
  const stopNow = async (graceMs = 5000) => {
    if (exitedNow(child)) { await exited; return }
    signal('SIGTERM')
    const timer = setTimeout(() => signal('SIGKILL'), graceMs)
    await exited
    clearTimeout(timer)
  }
  const untrack = track(name, child, stopNow)
  const proc: GroupProcess = {
    name,
    child,
    pid,
    logPath: opts.logPath,
    exited,
    alive: () => !exitedNow(child),
    signal,
    stop: async (graceMs?: number) => { await stopNow(graceMs); await untrack() }
  }
  // Once it is gone by any route (kill -9 on purpose), it leaves the registry.
  exited.then(async () => await untrack()).catch(() => {})
  return proc
}

/** Polls `check` every `everyMs` until it returns a value other than undefined, or throws after `timeoutMs`. */
export async function waitFor<T> (
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
  timeoutMs: number,
  everyMs = 100
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  while (Date.now() < deadline) {
    try {
      const value = await check()
      if (value !== undefined) return value
    } catch (err) {
      last = err
    }
    await new Promise(resolve => setTimeout(resolve, everyMs))
  }
  throw new Error(`${what}: not within ${timeoutMs} ms${last instanceof Error ? ` (last error: ${last.message})` : ''}`)
}
