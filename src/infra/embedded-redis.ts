import { spawn, type ChildProcess } from 'node:child_process'
import { mkdir, readFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { once } from 'node:events'
import { join } from 'node:path'

export interface EmbeddedRedis { url: string, port: number, process: ChildProcess, stop: () => Promise<void> }

export class RedisServerMissing extends Error {
  constructor () {
    super('redis-server was not found on PATH; install it with: apt-get install -y redis-server (or set REDIS_URL)')
    this.name = 'RedisServerMissing'
  }
}

/** Asks the kernel for a free loopback port. */
export async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

/**
 * A redis-server left running on this data directory by a process that was killed before it could stop it: two
 * servers must never write one AOF, so it is stopped first.
 */
async function stopOrphan (pidFile: string): Promise<void> {
  const pid = Number(await readFile(pidFile, 'utf8').catch(() => ''))
  if (!Number.isInteger(pid) || pid <= 0) return
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
  if (!cmdline.startsWith('redis-server')) return
  try { process.kill(pid, 'SIGTERM') } catch { return }
  for (let i = 0; i < 50; i++) {
    await new Promise(resolve => setTimeout(resolve, 100))
    const still = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
    if (still === '' || /State:\s+Z/.test(still)) return
  }
  process.kill(pid, 'SIGKILL')
}

/**
 * Starts a child `redis-server` on loopback with AOF on, data in `dir`. `appendfsync always` by default: a write is
 * on disk before Redis answers it, so a 202 survives a host crash, not only a process crash (everysec can lose
 * the last second of acknowledged writes when the machine dies).
 * Resolves when it accepts connections; `stop()` shuts it down (SIGTERM, then SIGKILL after 5 s).
 */
export interface RedisServerOptions {
  dir: string
  port?: number
  persist?: boolean
  fsync?: 'always' | 'everysec'
  /** More redis-server arguments (tests: `--replicaof`, `--enable-debug-command`). */
  extraArgs?: string[]
  /**
   * Its own process group: a Ctrl-C meant for the gateway does not reach it, and it outlives the gateway that
   * started it (another gateway on the same DATA_DIR may still use it: src/infra/data-dir-redis.ts).
   */
  detached?: boolean
}

export async function startRedisServer (opts: RedisServerOptions): Promise<EmbeddedRedis> {
  await mkdir(opts.dir, { recursive: true })
  await stopOrphan(join(opts.dir, 'redis.pid'))
  const port = opts.port ?? await freePort()
  const persist = opts.persist ?? true
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', opts.dir, '--save', '',
    '--pidfile', join(opts.dir, 'redis.pid'), '--appendonly', persist ? 'yes' : 'no',
    '--appendfsync', opts.fsync ?? 'always', '--protected-mode', 'yes', '--daemonize', 'no', ...(opts.extraArgs ?? [])]
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'], detached: opts.detached === true })
  let output = ''
  const ready = new Promise<void>((resolve, reject) => {
    child.once('error', (err: NodeJS.ErrnoException) => reject(err.code === 'ENOENT' ? new RedisServerMissing() : err))
    child.once('exit', code => reject(new Error(`redis-server exited with ${code}: ${output.slice(-500)}`)))
    child.stdout.on('data', (chunk: Buffer) => {
      if (output.length < 10_000) output += chunk.toString()
      if (output.includes('Ready to accept connections')) resolve()
    })
  })
  const timeout = setTimeout(() => child.kill('SIGKILL'), 15_000)
  try {
    await ready
  } finally {
    clearTimeout(timeout)
  }
  child.removeAllListeners('exit')
  child.stdout.removeAllListeners('data')
  child.stdout.resume()
  child.stderr.resume()
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGTERM')
    const kill = setTimeout(() => child.kill('SIGKILL'), 5000)
    await exited
    clearTimeout(kill)
  }
  return { url: `redis://127.0.0.1:${port}`, port, process: child, stop }
}
