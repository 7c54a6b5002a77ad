import { spawn, type ChildProcess } from 'node:child_process'
import { mkdir } from 'node:fs/promises'
import { createServer } from 'node:net'
import { once } from 'node:events'

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
 * Starts a child `redis-server` on loopback with AOF on (appendfsync everysec), data in `dir`.
 * Resolves when it accepts connections; `stop()` shuts it down (SIGTERM, then SIGKILL after 5 s).
 */
export async function startRedisServer (opts: { dir: string, port?: number, persist?: boolean }): Promise<EmbeddedRedis> {
  await mkdir(opts.dir, { recursive: true })
  const port = opts.port ?? await freePort()
  const persist = opts.persist ?? true
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', opts.dir, '--save', '',
    '--appendonly', persist ? 'yes' : 'no', '--appendfsync', 'everysec', '--protected-mode', 'yes', '--daemonize', 'no']
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] })
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
