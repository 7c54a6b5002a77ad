/**
 * Gateway replicas as processes (`node --import tsx src/server.ts`, as production runs it), each on a fixed port so
 * that a restarted replica takes its old place behind the balancer. Logs append to one file per replica.
 */
import { appendFileSync } from 'node:fs'
import { request } from 'undici'
import { ROOT } from '../../bench/lib/proc.ts'
import { spawnGroup, waitFor, type GroupProcess } from '../../test/helpers/group-process.ts'

export class Replica {
  proc?: GroupProcess
  starts = 0

  constructor (
    readonly name: string,
    readonly port: number,
    private readonly env: Record<string, string>,
    readonly logPath: string
  ) {}

  get origin (): string { return `http://127.0.0.1:${this.port}` }
  alive (): boolean { return this.proc?.alive() ?? false }

  /** Starts it and waits for /health/ready; the log says where each start begins. */
  async start (timeoutMs = 40_000): Promise<void> {
    if (this.alive()) throw new Error(`${this.name} is already running`)
    this.starts++
    appendFileSync(this.logPath, `\n=== ${this.name} start #${this.starts} at ${new Date().toISOString()} ===\n`)
    const args = ['--import', 'tsx', 'src/server.ts']
    this.proc = spawnGroup(`gateway ${this.name} :${this.port}`, process.execPath, args, {
      logPath: this.logPath,
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        HOME: process.env.HOME ?? '/tmp',
        NODE_ENV: 'production',
        ...this.env,
        PORT: String(this.port),
        HOST: '127.0.0.1'
      }
    })
    const proc = this.proc
    await waitFor(`${this.name} ready`, async () => {
      if (!proc.alive()) throw new Error(`${this.name} exited during start; see ${this.logPath}`)
      return await this.ready() ? true : undefined
    }, timeoutMs, 100)
  }

  /** /health/ready answers 200 within a second. */
  async ready (): Promise<boolean> {
    if (!this.alive()) return false
    try {
      const res = await request(`${this.origin}/health/ready`, { headersTimeout: 1000, bodyTimeout: 1000 })
      await res.body.dump()
      return res.statusCode === 200
    } catch {
      return false
    }
  }

  /**
   * SIGTERM: waits for it to exit by itself (its own shutdown grace plus a margin), then SIGKILL.
   * SIGKILL: at once. Resolves once it is gone.
   */
  async kill (signal: 'SIGTERM' | 'SIGKILL', graceMs = 15_000): Promise<{ exitedInMs: number, code: number | null }> {
    const proc = this.proc
    if (proc === undefined || !proc.alive()) return { exitedInMs: 0, code: null }
    const t0 = Date.now()
    proc.signal(signal)
    const timer = setTimeout(() => proc.signal('SIGKILL'), graceMs)
    const { code } = await proc.exited
    clearTimeout(timer)
    return { exitedInMs: Date.now() - t0, code }
  }

  async stop (): Promise<void> { await this.proc?.stop(5000) }
}
