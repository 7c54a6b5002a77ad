/**
 * One embedded redis-server per DATA_DIR, shared by every gateway started on that directory. Two redis-servers must
 * never write one AOF, and a second `npm start` (another PORT, or the same busy one) must never stop a Redis the
 * first still uses. So `DATA_DIR/redis.lock` says which redis-server serves the directory (pid, port) and which
 * gateways use it (pid and start time, so a reused pid is not taken for a live gateway); every change to it is made
 * under a mutex file (`redis.lock.mutex`, O_EXCL, holding its pid: stale once that pid is gone).
 *
 * A gateway joins a running, answering redis-server; a Redis is stopped only by the last gateway that uses it.
 * The redis-server runs in its own process group, so a Ctrl-C in the first gateway's terminal does not reach it
 * while a second gateway still uses it; a gateway killed -9 leaves it running, and the next start adopts it.
 */
import { once } from 'node:events'
import { open, readFile, rename, unlink, writeFile, mkdir } from 'node:fs/promises'
import { connect } from 'node:net'
import { join, resolve } from 'node:path'
import { startRedisServer, type EmbeddedRedis } from './embedded-redis.ts'

interface User { pid: number, start: string }
interface LockState { redis: { pid: number, port: number }, users: User[] }

export interface DataDirRedis {
  url: string
  port: number
  /** Whether another gateway's redis-server was joined (or an orphaned one adopted) rather than started. */
  joined: boolean
  /** The other gateways using it when this one started. */
  others: number[]
  /** Leaves it; the last user stops the redis-server. Says what it did, for the log. */
  release: () => Promise<string>
}

/** The directory is held in a way this process cannot safely share: the message names DATA_DIR. */
export class DataDirBusy extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'DataDirBusy'
  }
}

const MUTEX_TRIES = 100
const MUTEX_WAIT_MS = 50

/** The kernel's start time of `pid` (field 22 of /proc/<pid>/stat); '' when it is gone or there is no /proc. */
async function startTime (pid: number): Promise<string | null> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null)
  if (stat === null) return alive(pid) ? '' : null
  // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? ''
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

async function userAlive (u: User): Promise<boolean> {
  const start = await startTime(u.pid)
  return start !== null && (u.start === '' || start === '' || start === u.start)
}

async function isRedisServer (pid: number): Promise<boolean> {
  if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) return false
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => null)
  return cmdline === null || cmdline.startsWith('redis-server')
}

/** Whether a Redis answers PING on the loopback port within a second. */
async function answers (port: number): Promise<boolean> {
  const socket = connect({ host: '127.0.0.1', port })
  socket.setTimeout(1000)
  try {
    await once(socket, 'connect')
    socket.write('PING\r\n')
    const [data] = await once(socket, 'data') as [Buffer]
    return data.toString().startsWith('+PONG')
  } catch {
    return false
  } finally {
    socket.destroy()
  }
}

async function withMutex<T> (path: string, dataDir: string, fn: () => Promise<T>): Promise<T> {
  for (let i = 0; i < MUTEX_TRIES; i++) {
    try {
      const handle = await open(path, 'wx', 0o600)
      await handle.writeFile(String(process.pid))
      await handle.close()
      try { return await fn() } finally { await unlink(path).catch(() => {}) }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const holder = Number(await readFile(path, 'utf8').catch(() => ''))
      // Stale: its holder died between open and unlink. (An empty file is one being written right now.)
      if (holder > 0 && !alive(holder)) { await unlink(path).catch(() => {}); continue }
      await new Promise(resolve => setTimeout(resolve, MUTEX_WAIT_MS))
    }
  }
  throw new DataDirBusy(`DATA_DIR=${dataDir}: another gateway has held ${path} for ` +
    `${MUTEX_TRIES * MUTEX_WAIT_MS / 1000} s (starting or stopping); try again, or remove it if no gateway runs`)
}

async function readState (path: string): Promise<LockState | null> {
  try {
    const state = JSON.parse(await readFile(path, 'utf8')) as LockState
    return Number.isInteger(state.redis?.pid) && Array.isArray(state.users) ? state : null
  } catch {
    return null
  }
}

async function writeState (path: string, state: LockState): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`
  await writeFile(tmp, JSON.stringify(state) + '\n', { mode: 0o600 })
  await rename(tmp, path)
}

async function liveUsers (state: LockState | null): Promise<User[]> {
  const users: User[] = []
  for (const u of (state?.users ?? []).slice(0, 1000)) if (u.pid !== process.pid && await userAlive(u)) users.push(u)
  return users
}

/** SIGTERM to a redis-server that is not our child, then SIGKILL after 10 s (it fsyncs on the way out). */
async function stopPid (pid: number): Promise<void> {
  try { process.kill(pid, 'SIGTERM') } catch { return }
  for (let i = 0; i < 100 && await isRedisServer(pid); i++) await new Promise(resolve => setTimeout(resolve, 100))
  if (await isRedisServer(pid)) { try { process.kill(pid, 'SIGKILL') } catch {} }
}

/** Joins the redis-server of `dataDir` (data in `dataDir/redis`), or starts it. */
export async function acquireDataDirRedis (dataDir: string): Promise<DataDirRedis> {
  const dir = resolve(dataDir)
  await mkdir(dir, { recursive: true })
  const lockPath = join(dir, 'redis.lock')
  const mutexPath = `${lockPath}.mutex`
  const me: User = { pid: process.pid, start: await startTime(process.pid) ?? '' }
  let child: EmbeddedRedis | undefined

  const result = await withMutex(mutexPath, dataDir, async () => {
    const state = await readState(lockPath)
    const users = await liveUsers(state)
    if (state !== null && await isRedisServer(state.redis.pid)) {
      if (await answers(state.redis.port)) {
        await writeState(lockPath, { redis: state.redis, users: [...users, me] })
        return { port: state.redis.port, joined: true, others: users.map(u => u.pid) }
      }
      if (users.length > 0) {
        throw new DataDirBusy(`DATA_DIR=${dataDir}: its embedded redis-server (pid ${state.redis.pid}, port ` +
          `${state.redis.port}) does not answer, and gateway pid ${users.map(u => u.pid).join(', ')} uses it; ` +
          'not stopping it. Use another DATA_DIR, or stop that gateway first')
      }
      // Nobody uses it and it does not answer: startRedisServer stops it before starting another.
    }
    // Gone (crashed, or never started): start it, on its old port when gateways still use it, so they reconnect.
    const previous = users.length > 0 ? state?.redis.port : undefined
    child = await startRedisServer({ dir: join(dir, 'redis'), port: previous, detached: true })
      .catch(async err => {
        if (previous === undefined) throw err
        return await startRedisServer({ dir: join(dir, 'redis'), detached: true })
      })
    const pid = child.process.pid ?? 0
    await writeState(lockPath, { redis: { pid, port: child.port }, users: [...users, me] })
    return { port: child.port, joined: false, others: users.map(u => u.pid) }
  })

  let released = false
  const release = async (): Promise<string> => {
    if (released) return 'released already'
    released = true
    return await withMutex(mutexPath, dataDir, async () => {
      const state = await readState(lockPath)
      const users = await liveUsers(state)
      if (state === null) { await child?.stop(); return 'stopped the embedded redis-server' }
      if (users.length > 0) {
        await writeState(lockPath, { redis: state.redis, users })
        return `left the embedded redis-server running: gateway pid ${users.map(u => u.pid).join(', ')} uses it`
      }
      if (child !== undefined && child.process.pid === state.redis.pid) await child.stop()
      else if (await isRedisServer(state.redis.pid)) await stopPid(state.redis.pid)
      await unlink(lockPath).catch(() => {})
      return 'stopped the embedded redis-server (the last gateway on DATA_DIR)'
    })
  }
  return { url: `redis://127.0.0.1:${result.port}`, ...result, release }
}
