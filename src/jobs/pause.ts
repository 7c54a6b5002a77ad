/**
 * The submit queue's pause for account problems (docs/DESIGN.md, "Account problems pause the queue"). A refusal
 * about the whole upstream account (a revoked key, an empty wallet, Kling's account codes 1100-1102) would refuse
 * every other create too: failing each task for it would fail them all, so the queue stops for every replica
 * instead, queued tasks wait, and it starts again by itself.
 *
 * - Tripped by any upstream call that answers such a refusal (UpstreamError.account); the state is in Redis
 *   (src/store/pause.ts), so every replica stops, and the replica whose call changed it logs one line.
 * - While paused, a submit job about to send is kept out (the queue is rate-limited for `waitMs`, no attempt
 *   spent). Look-ups of earlier creates still run: they cost nothing and find paid tasks.
 * - Every UPSTREAM_PAUSE_CHECK_MS one replica checks (reconcile's `pause-check` scheduler): for a key problem a
 *   query of an id that exists nowhere (any answer but a key refusal means the key is accepted again); for a
 *   balance or account problem it offers a trial: the next job that would send takes it and is sent (half-open).
 *   A create that succeeds, or that upstream refuses for a reason of the task's own, ends the pause.
 */
import type { Logger } from 'pino'
import type { Config } from '../config/index.ts'
import { DEFAULT_KIND } from '../domain/kinds.ts'
import type { PauseState, PauseStore } from '../store/pause.ts'
import { UpstreamError } from '../upstream/client.ts'
import type { UpstreamAdapter } from '../upstream/adapter.ts'

/** An id no upstream has: the key check asks for it, and any answer but a key refusal will do. */
const PROBE_ID = 'kling-gateway-key-check'

export type Gate = 'open' | 'trial' | 'closed'

export interface PauseDeps {
  store: PauseStore
  upstream: UpstreamAdapter
  config: Config
  logger: Logger
  clock: () => number
}

export class UpstreamPause {
  private readonly log: Logger

  constructor (private readonly deps: PauseDeps) {
    this.log = deps.logger.child({ component: 'upstream-pause' })
  }

  /** Why the queue is paused, or null while it runs. */
  async state (): Promise<PauseState | null> {
    return await this.deps.store.get()
  }

  /** How long a job kept out of a paused queue waits before the queue looks again. */
  get waitMs (): number {
    return Math.min(this.deps.config.upstream.pauseCheckMs, 10_000)
  }

  /** Whether a job may send a create now: the queue runs, it takes the one trial offered, or it must wait. */
  async gate (): Promise<Gate> {
    const state = await this.deps.store.get()
    if (state === null) return 'open'
    return state.reason !== 'key' && await this.deps.store.takeTrial() ? 'trial' : 'closed'
  }

  /** Pauses the queue for `err`'s account problem; logs once per change of state, for all replicas. */
  async trip (err: UpstreamError): Promise<void> {
    if (err.account === null) return
    const { code, message } = err
    const outcome = await this.deps.store.trip({ reason: err.account, code, message }, this.deps.clock())
    if (outcome === 'same') return
    this.log.error({ reason: err.account, code, message },
      'upstream refused the account: the submit queue is paused on every replica; queued tasks wait')
  }

  /**
   * Ends the pause, if there is one (and, with `sentAt`, if it began before a create sent then). Called after every
   * successful create, so it costs one Redis call and logs only when it ended a pause.
   */
  async resume (evidence: string, sentAt?: number): Promise<void> {
    if (!await this.deps.store.clear(sentAt)) return
    this.log.warn({ evidence }, 'upstream accepts the account again: the submit queue is resumed')
  }

  /** The periodic check (one replica at a time): a key check, or a trial offered to the next job that would send. */
  async check (): Promise<string> {
    const state = await this.deps.store.get()
    if (state === null) return 'running'
    if (state.reason !== 'key') {
      await this.deps.store.offerTrial(this.deps.config.upstream.pauseCheckMs)
      return 'trial offered'
    }
    try {
      await this.deps.upstream.query(DEFAULT_KIND, PROBE_ID)
    } catch (err) {
      if (!(err instanceof UpstreamError)) throw err
      if (err.account !== null) {
        await this.trip(err)
        return 'still paused'
      }
      // Timeouts and 5xx say nothing about the key; any other answer means it was accepted.
      if (err.retryable) return 'unknown'
    }
    await this.resume('a query with the key was answered')
    return 'resumed'
  }
}
