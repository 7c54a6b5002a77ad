/**
 * The deployment-wide per-caller counters that are not task state (docs/API.md, "Per-caller limits"): the create
 * token bucket (`bucket-2.lua`) and the usage of a UTC day (tasks created, units charged), which the create
 * script writes and `GET /v1/usage` reads. Tasks, their indexes and the units a task carries stay in TaskStore.
 */
import type { Result } from 'ioredis'
import type { RedisClient } from '../infra/redis.ts'
import type { Keys } from './keys.ts'
import { script } from './tasks.ts'

declare module 'ioredis' {
  interface RedisCommander<Context> {
    kgBucket: (bucket: string, idempotency: string, capacity: string) => Result<[number, number], Context>
  }
}

/** What taking a create token did: taken, not needed (a replay of a create that made its task), or refused. */
export type TokenOutcome = { outcome: 'taken' | 'replay' } | { outcome: 'refused', retryAfterMs: number }

export class LimitStore {
  constructor (private readonly redis: RedisClient, private readonly k: Keys) {
    redis.defineCommand('kgBucket', script('bucket-2'))
  }

  /**
   * Takes one of `capacity` tokens (refilled at `capacity` per minute) from the caller's bucket, unless
   * `idempotencyKey` already has a task (a replay costs nothing).
   */
  async takeCreateToken (caller: string, capacity: number, idempotencyKey?: string): Promise<TokenOutcome> {
    const bucket = this.k.createBucket(caller)
    const record = idempotencyKey === undefined ? bucket : this.k.idempotency(caller, idempotencyKey)
    const [code, ms] = await this.redis.kgBucket(bucket, record, String(capacity))
    if (code === 1) return { outcome: 'taken' }
    if (code === 2) return { outcome: 'replay' }
    return { outcome: 'refused', retryAfterMs: ms }
  }

  /** Tasks created and units charged (net of units given back) on `day` (UTC `YYYY-MM-DD`). */
  async usage (caller: string, day: string): Promise<{ tasks: number, units: number }> {
    const [tasks, units] = await this.redis.hmget(this.k.usage(caller, day), 'tasks', 'units')
    // HINCRBYFLOAT leaves binary noise after a refund of decimal units (0.30000000000000004): units are kept to 1e-6.
    return { tasks: Number(tasks ?? 0), units: Math.max(0, Math.round(Number(units ?? 0) * 1e6) / 1e6) }
  }
}
