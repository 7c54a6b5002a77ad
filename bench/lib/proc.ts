/**
 * Child processes for the benchmarks: every one is registered here when started and stopped by `stopAll()`, which
 * run.ts calls on every way out (normal end, error, signal, hard deadline). Nothing here kills by name.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'

export const ROOT = fileURLToPath(new URL('../../', import.meta.url))

interface Tracked { name: string, child?: ChildProcess, stop: () => Promise<void> }
const running = new Set<Tracked>()

function exited (child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null
}

/** Sends SIGTERM, then SIGKILL after `graceMs` (long enough for a --cpu-prof child to write its profile). */
export async function stopChild (child: ChildProcess, graceMs = 15_000): Promise<void> {
  if (exited(child)) return
  const gone = once(child, 'exit')
  child.kill('SIGTERM')
  const kill = setTimeout(() => { if (!exited(child)) child.kill('SIGKILL') }, graceMs)
  await gone
  clearTimeout(kill)
}

/**
 * Registers a process (or anything with a stop, such as an in-process server) so that stopAll() ends it; returns the
 * unregistering stop.
 */
export function track (
  name: string,
  child: ChildProcess | undefined,
  stop: () => Promise<void> = async () => { if (child !== undefined) await stopChild(child) }
): () => Promise<void> {
  const entry: Tracked = { name, child, stop }
  running.add(entry)
  return async () => {
    try { await entry.stop() } finally { running.delete(entry) }
  }
}

/** Stops everything still registered, newest first. */
export async function stopAll (): Promise<void> {
  for (const entry of [...running].reverse()) {
    await entry.stop().catch(() => {
      if (entry.child !== undefined && !exited(entry.child)) entry.child.kill('SIGKILL')
    })
    running.delete(entry)
  }
}

/** Names of processes still registered (for the final check). */
export function stillRunning (): string[] {
  return [...running]
    .filter(e => e.child === undefined || !exited(e.child))
    .map(e => `${e.name} (pid ${e.child?.pid ?? '-'})`)
}

export interface NodeChild {
  child: ChildProcess
  pid: number
  /** The last few KB of stdout+stderr, for error messages. */
  output: () => string
  /** All of stdout (up to 4 MB). */
  stdout: () => string
  /** pino lines at warn or above (first 50, each cut to 600 characters). */
  problems: string[]
  stop: () => Promise<void>
}

/**
 * Runs `node --import tsx <script>` from the repository root (a `.js` script without tsx). The child is `node`
 * itself (tsx registers its loader in-process), so its pid is the one whose /proc entry we read.
 */
export function startNode (
  name: string,
  script: string,
  env: Record<string, string>,
  args: string[] = [],
  nodeArgs: string[] = []
): NodeChild {
  const loader = script.endsWith('.ts') ? ['--import', 'tsx'] : []
  const child = spawn(process.execPath, [...nodeArgs, ...loader, script, ...args], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: process.env.HOME ?? '/tmp',
      NODE_ENV: 'production',
      ...env
    },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let out = ''
  let stdout = ''
  let partial = ''
  const problems: string[] = []
  const keep = (chunk: Buffer) => {
    const text = chunk.toString()
    out = (out + text).slice(-8000)
    const lines = (partial + text).split('\n')
    partial = (lines.pop() ?? '').slice(-100_000)
    for (const line of lines) {
      if (problems.length < 50 && /"level":(40|50|60)\b/.test(line)) problems.push(line.slice(0, 600))
    }
  }
  child.stdout?.on('data', (chunk: Buffer) => {
    keep(chunk)
    if (stdout.length < 4_000_000) stdout += chunk.toString()
  })
  child.stderr?.on('data', keep)
  if (child.pid === undefined) throw new Error(`${name}: could not start`)
  const stop = track(name, child)
  return { child, pid: child.pid, output: () => out, stdout: () => stdout, problems, stop }
}

/** Polls `url` until it answers 200, the child exits, or `timeoutMs` passes. */
export async function waitHttpOk (
  url: string,
  child: ChildProcess,
  output: () => string,
  timeoutMs = 30_000
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (exited(child)) {
      throw new Error(
        `process exited (code ${child.exitCode}, signal ${child.signalCode}) before ${url} answered:\n${output()}`
      )
    }
    try {
      const res = await request(url, { headersTimeout: 1000, bodyTimeout: 1000 })
      await res.body.dump()
      if (res.statusCode === 200) return
    } catch {}
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  throw new Error(`${url} did not answer 200 within ${timeoutMs} ms:\n${output()}`)
}

/** VmHWM (peak RSS) and VmRSS of a process, in bytes; null when it is gone. */
export function memoryOf (pid: number): { peakRss: number, rss: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const kb = (field: string) =>
      Number((new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status) ?? [])[1] ?? NaN) * 1024
    return { peakRss: kb('VmHWM'), rss: kb('VmRSS') }
  } catch {
    return null
  }
}

/** The command line the kernel has for a pid (to check that we read the right process). */
export function cmdlineOf (pid: number): string | null {
  try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim() } catch { return null }
}

/** Waits for a child to exit by itself, killing it after `timeoutMs`; returns its exit code. */
export async function waitExit (child: ChildProcess, timeoutMs: number): Promise<number | null> {
  if (!exited(child)) {
    const timer = setTimeout(() => { if (!exited(child)) child.kill('SIGKILL') }, timeoutMs)
    await once(child, 'exit')
    clearTimeout(timer)
  }
  return child.exitCode
}

/** User + system CPU time a process has used so far, in milliseconds (clock ticks are 100 Hz on Linux). */
export function cpuMsOf (pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // After the command: state is field 3, utime 14, stime 15 (1-based in proc(5)), i.e. index 11 and 12 here.
    return (Number(fields[11]) + Number(fields[12])) * 10
  } catch {
    return null
  }
}

/** CPU time all cores have spent busy (not idle, not waiting on I/O) since boot, in milliseconds, from /proc/stat. */
export function machineBusyMs (): number | null {
  try {
    const first = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
    const total = first.slice(0, 8).reduce((a, b) => a + b, 0)
    return (total - first[3] - first[4]) * 10
  } catch {
    return null
  }
}
