/**
 * The upstream account's pause, shared by every replica: while set, no replica sends a create (src/jobs/pause.ts
 * decides when; this only keeps the state). One hash says why (`reason`, upstream's `code` and `message`, `since`);
 * a token beside it is the one trial a paused queue lets through. Both keys are under the store's hash tag.
 */
import type { Redis, Cluster } from 'ioredis'
import type { AccountProblem } from '../upstream/client.ts'
import type { Keys } from './keys.ts'
import { pack, script } from './tasks.ts'

export interface PauseState {
  reason: AccountProblem
  /** Upstream's error code that tripped it, e.g. COMET_insufficient_user_quota (the key never is in it). */
  code: string
  message: string
  /** Unix ms. */
  since: number
}

/** What a trip did: paused a running queue, changed the reason of a paused one, or nothing new. */
export type TripOutcome = 'paused' | 'changed' | 'same'

export class PauseStore {
  constructor (private readonly redis: Redis | Cluster, private readonly k: Keys) {
    redis.defineCommand('kgPause', script('pause-2'))
  }

  async get (): Promise<PauseState | null> {
    const h = await this.redis.hgetall(this.k.pause)
    if (h.since === undefined) return null
    return { reason: h.reason as AccountProblem, code: h.code, message: h.message, since: Number(h.since) }
  }

  /** Pauses the queue (or updates why it is paused); says whether the state changed, so one replica logs it. */
  async trip (state: Omit<PauseState, 'since'>, now: number): Promise<TripOutcome> {
    const n = await this.redis.kgPause(this.k.pause, this.k.pauseTrial,
      pack({ op: 'trip', ...state, now: String(now) }))
    return n === 1 ? 'paused' : n === 2 ? 'changed' : 'same'
  }

  /**
   * Resumes the queue; true when this call ended a pause. `sentAt`: the evidence is a create sent then, and a
   * create sent before the pause began does not end it.
   */
  async clear (sentAt?: number): Promise<boolean> {
    const args = pack({ op: 'clear', sent_at: sentAt === undefined ? '' : String(sentAt) })
    return await this.redis.kgPause(this.k.pause, this.k.pauseTrial, args) === 1
  }

  /** Lets one submit job through a paused queue, for `ttlMs` at most. */
  async offerTrial (ttlMs: number): Promise<void> {
    await this.redis.set(this.k.pauseTrial, '1', 'PX', Math.max(1, ttlMs))
  }

  /** Takes the trial, if one is offered: true for exactly one caller. */
  async takeTrial (): Promise<boolean> {
    return await this.redis.del(this.k.pauseTrial) === 1
  }
}
