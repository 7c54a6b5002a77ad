/**
 * The fair share's state in Redis (src/jobs/fair.ts decides when to use it): one line of waiting tasks per caller,
 * each caller's lag behind the virtual time, and the slots released tasks hold. Every change is one Lua script, so
 * any number of replicas may enqueue and release at once. Every key is under the store's hash tag.
 */
import type { Redis, Cluster, Result } from 'ioredis'
import type { Keys } from './keys.ts'
import { pack, script } from './tasks.ts'

declare module 'ioredis' {
  interface RedisCommander<Context> {
    kgFairEnqueue: (...args: Array<string | Buffer>) => Result<number, Context>
    kgFairRelease: (...args: Array<string | Buffer>) => Result<string[], Context>
  }
}

/** How the release script weighs callers: the step of a start tag is `STEP_UNIT / weight`. */
export const STEP_UNIT = 1_000_000

export interface ReleaseRequest {
  now: number
  /** Slots in all (UPSTREAM_CONCURRENCY). */
  cap: number
  /** How long a slot is held at most when its job never ends (its replica died). */
  leaseMs: number
  /** Weight of callers with none of their own. */
  defaultWeight: number
  /** Callers whose weight is not the default → their weight. */
  weights: Record<string, number>
  /** Releases in this call at most. */
  max: number
}

export interface Released { taskId: string, caller: string }

const stepOf = (weight: number): number => Math.max(1, Math.round(STEP_UNIT / weight))

export class FairStore {
  constructor (private readonly redis: Redis | Cluster, private readonly k: Keys) {
    redis.defineCommand('kgFairEnqueue', script('fair-enqueue-4'))
    redis.defineCommand('kgFairRelease', script('fair-release-5'))
  }

  /** Puts a task in its caller's line, unless it is already waiting there or holds a slot (it says which). */
  async enqueue (taskId: string, caller: string, at: number): Promise<'queued' | 'waiting' | 'holds-slot'> {
    const { fairReady, fairQueued, fairCallers, fairSlots } = this.k
    const args = pack({ task: taskId, caller, at: String(Math.max(0, Math.floor(at))).padStart(15, '0') })
    const r = await this.redis.kgFairEnqueue(fairReady, fairQueued, fairCallers, fairSlots, args)
    return r === 1 ? 'queued' : r === 2 ? 'holds-slot' : 'waiting'
  }

  /** Takes free slots for the tasks next in fair order. */
  async release (r: ReleaseRequest): Promise<Released[]> {
    const { fairReady, fairQueued, fairCallers, fairLag, fairSlots } = this.k
    const steps = Object.fromEntries(Object.entries(r.weights).map(([c, w]) => [c, stepOf(w)]))
    const args = pack({
      now: r.now, cap: r.cap, lease: r.leaseMs, step: stepOf(r.defaultWeight), steps, max: r.max
    })
    const flat = await this.redis.kgFairRelease(fairReady, fairQueued, fairCallers, fairLag, fairSlots, args)
    const out: Released[] = []
    for (let i = 0; i + 1 < flat.length; i += 2) out.push({ taskId: flat[i], caller: flat[i + 1] })
    return out
  }

  /** Gives a task's slot back (its job run ended); a no-op for a task holding none. */
  async done (taskId: string): Promise<void> {
    await this.redis.zrem(this.k.fairSlots, taskId)
  }

  /** Callers with tasks waiting for a slot → how many (the callers with none are absent). */
  async waiting (): Promise<Record<string, number>> {
    const h = await this.redis.hgetall(this.k.fairCallers)
    return Object.fromEntries(Object.entries(h).map(([c, n]) => [c, Number(n)]))
  }
}
