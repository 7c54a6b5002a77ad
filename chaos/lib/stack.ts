/**
 * Everything one fault case runs against, besides Redis: the simulator (its own process), the balancer, two
 * gateway replicas (processes) and a webhook receiver registered as an endpoint of each caller.
 */
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import { track } from '../../bench/lib/proc.ts'
import type { CallbackPolicy } from '../../simulator/app.ts'
import { freePorts } from '../../test/helpers/redis-topology.ts'
import { Receiver } from '../../test/helpers/receiver.ts'
import { Balancer } from './balancer.ts'
import { Replica } from './gateway.ts'
import type { CallerCreds } from './load.ts'
import { startSimulator, type SimProcess } from './simulator.ts'

export type RedisTarget =
  | { kind: 'url', url: string }
  | { kind: 'sentinel', sentinels: string, name: string }
  | { kind: 'cluster', nodes: string }

export interface StackOptions {
  logDir: string
  dataDir: string
  redis: RedisTarget
  /** REDIS_MIN_REPLICAS_ACKED for the gateway (a setting it may not read yet). */
  minReplicasAcked?: number | 'auto'
  env?: Record<string, string>
  failRatio?: number
  callbacks?: Partial<CallbackPolicy>
}

export function redisEnv (t: RedisTarget): Record<string, string> {
  if (t.kind === 'url') return { REDIS_URL: t.url }
  if (t.kind === 'sentinel') return { REDIS_SENTINELS: t.sentinels, REDIS_SENTINEL_NAME: t.name }
  return { REDIS_CLUSTER_NODES: t.nodes }
}

/** Gateway settings shrunk so that retries, reconciliation and webhooks finish within a case's few seconds. */
export const GATEWAY_ENV: Record<string, string> = {
  REDIS_PREFIX: 'kg',
  WEBHOOK_ALLOW_PRIVATE: 'true',
  MIRROR_ALLOW_PRIVATE: 'true',
  BLOB_DRIVER: 'dir',
  RECONCILE_INTERVAL_MS: '1000',
  RECONCILE_AFTER_MS: '2000',
  SUBMIT_UNCONFIRMED_GRACE_MS: '3000',
  UPSTREAM_TIMEOUT_MS: '3000',
  UPSTREAM_RETRY_BASE_MS: '200',
  WEBHOOK_RETRY_SCHEDULE: '0,500ms,1s,2s,5s,10s',
  WEBHOOK_TIMEOUT_MS: '3000',
  SHUTDOWN_GRACE_MS: '5000',
  LOG_LEVEL: 'warn',
  // The load is about faults, not per-caller limits: a 429 would read as a client giving up.
  CALLER_CREATES_PER_MINUTE: '0',
  CALLER_MAX_ACTIVE_TASKS: '0',
  // Not read by the gateway yet (the config ignores unknown variables); the fix being written will.
  REDIS_ACK_TIMEOUT_MS: '500',
  SHUTDOWN_DRAIN_MS: '500'
}

export class Stack {
  replicas: Replica[] = []
  callers: CallerCreds[] = []
  admin: CallerCreds = { name: 'ops', key: '' }
  // The in-process servers are registered too, so stopAll() closes them if a case is abandoned at its deadline.
  private readonly untrack: Array<() => Promise<void>>
  private constructor (
    readonly sim: SimProcess,
    readonly lb: Balancer,
    readonly receiver: Receiver,
    readonly opts: StackOptions
  ) {
    this.untrack = [
      track('balancer', undefined, async () => await lb.close()),
      track('webhook receiver', undefined, async () => await receiver.close())
    ]
  }

  static async start (opts: StackOptions): Promise<Stack> {
    const sim = await startSimulator({
      logPath: join(opts.logDir, 'simulator.log'),
      apiKey: `sk-chaos-${randomBytes(8).toString('hex')}`,
      processingAfterMs: 300,
      finishAfterMs: 1500,
      failRatio: opts.failRatio ?? 0.2,
      callbacks: opts.callbacks ?? { duplicate: 2, reorder: true, delayMs: 100, dropRatio: 0.2 }
    })
    const lb = await Balancer.start()
    const receiver = await Receiver.start()
    const stack = new Stack(sim, lb, receiver, opts)
    try {
      await stack.startReplicas()
      await stack.registerEndpoints()
    } catch (err) {
      await stack.stop()
      throw err
    }
    return stack
  }

  private async startReplicas (): Promise<void> {
    const key = () => randomBytes(16).toString('hex')
    this.callers = [{ name: 'alpha', key: key() }, { name: 'beta', key: key() }]
    this.admin = { name: 'ops', key: key() }
    const env: Record<string, string> = {
      ...GATEWAY_ENV,
      ...redisEnv(this.opts.redis),
      COMETAPI_BASE_URL: this.sim.url,
      COMETAPI_KEY: this.sim.apiKey,
      CALLBACK_SECRET: randomBytes(32).toString('hex'),
      API_KEYS: this.callers.map(c => `${c.name}:${c.key}`).join(','),
      ADMIN_API_KEYS: `${this.admin.name}:${this.admin.key}`,
      PUBLIC_BASE_URL: this.lb.origin,
      // The balancer is on loopback: the simulator behind COMETAPI_KEY calls back there.
      CALLBACK_ALLOW_INSECURE: 'true',
      BLOB_DIR: join(this.opts.dataDir, 'blobs'),
      DATA_DIR: join(this.opts.dataDir, 'data'),
      ...(this.opts.minReplicasAcked !== undefined && { REDIS_MIN_REPLICAS_ACKED: String(this.opts.minReplicasAcked) }),
      ...this.opts.env
    }
    const ports = await freePorts(2)
    this.replicas = ports.map((port, i) =>
      new Replica(`replica${i}`, port, env, join(this.opts.logDir, `replica${i}.log`)))
    this.lb.setBackends(ports)
    await Promise.all(this.replicas.map(async r => await r.start()))
  }

  /** One endpoint per caller, all event types, at /hook/<caller> on the receiver. */
  private async registerEndpoints (): Promise<void> {
    for (const c of this.callers) {
      const res = await request(`${this.lb.origin}/v1/webhook-endpoints`, {
        method: 'POST',
        headers: { authorization: `Bearer ${c.key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ url: this.receiver.url(`/hook/${c.name}`), description: 'chaos receiver' }),
        headersTimeout: 5000,
        bodyTimeout: 5000
      })
      const text = await res.body.text()
      if (res.statusCode !== 201) {
        throw new Error(`registering the webhook endpoint of ${c.name}: ${res.statusCode} ${text}`)
      }
    }
  }

  /** Kills a replica (it stays behind the balancer) and returns how long it took to exit. */
  async killReplica (i: number, signal: 'SIGTERM' | 'SIGKILL'): Promise<{ exitedInMs: number, code: number | null }> {
    const r = this.replicas[i]
    // SIGTERM is how an orchestrator drains a replica, and it keeps sending it traffic until it exits: the gateway
    // must refuse new work cleanly itself. SIGKILL is a crash: the balancer only learns from refused connections.
    return await r.kill(signal)
  }

  async restartReplica (i: number): Promise<void> {
    await this.replicas[i].start()
  }

  /**
   * Polls /health/ready of every replica that is running until all answer 200; returns seconds since `fromMs`.
   * Throws after `timeoutMs`.
   */
  async secondsToReady (fromMs: number, timeoutMs = 60_000, signal?: AbortSignal): Promise<number> {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline && signal?.aborted !== true) {
      const live = this.replicas.filter(r => r.alive())
      const ready = await Promise.all(live.map(async r => await r.ready()))
      if (live.length > 0 && ready.every(Boolean)) return (Date.now() - fromMs) / 1000
      await sleep(100)
    }
    throw new Error(`replicas not ready within ${timeoutMs} ms`)
  }

  logs (): string[] {
    return [...this.replicas.map(r => r.logPath), this.sim.proc.logPath]
  }

  async stop (): Promise<void> {
    await Promise.allSettled(this.replicas.map(async r => await r.stop()))
    await Promise.allSettled([this.sim.stop(), ...this.untrack.map(async u => await u())])
  }
}
