/**
 * Fair share of UPSTREAM_CONCURRENCY across callers (docs/DESIGN.md, "Fair share of the submit queue").
 *
 * BullMQ's queue is first come, first served: one caller's batch of 500 would hold every slot for hours. So a queued
 * task does not enter the submit queue at once: it waits in its caller's line in Redis (src/store/fair.ts), and the
 * dispatcher here releases tasks into the BullMQ submit queue only while fewer than UPSTREAM_CONCURRENCY hold a slot.
 * Which one goes next is start-time fair queuing over the callers with work:
 *
 * - each caller's next start tag is max(virtual time, its last finish tag); its finish tag is that plus 1 / weight;
 *   the caller with the smallest start tag goes, and the virtual time moves to it. Work-conserving: an idle caller
 *   is simply not among the candidates, and it earns no credit while idle (its tag catches up with the time).
 * - tags are stored relative to the virtual time (a lag in [0, 1e6 / weight]), so no number grows for ever, and a
 *   caller whose lag is used up is forgotten: the state is bounded by the callers with work.
 * - one Lua script picks and takes the slot, so N replicas share one order and one count.
 *
 * A slot is held from the release until that job's run ends (the worker gives it back, then releases the next), or
 * for a lease at most, in case its replica died. BullMQ's global concurrency stays the hard cap on creates in
 * flight; the slots only decide the order, so a leak or a lease that ends early costs fairness, never the cap. A run
 * that ends in a retry or a delay gives its slot back: the job comes back into BullMQ on its own and waits there.
 *
 * Crash safety: a task is in its line, or holds a slot, or has a BullMQ job. A replica dying between taking the slot
 * and adding the job leaves a queued task with a slot and no job: reconciliation ("queued without a submit job")
 * submits it again, and a submit that finds its task holding a slot adds the job at once (the slot is its own).
 */
import type { Logger } from 'pino'
import type { Config } from '../config/index.ts'
import { limitsFor } from '../config/callers.ts'
import type { FairStore } from '../store/fair.ts'
import { FailureLog } from '../infra/redis-log.ts'

/** How often each worker replica releases on its own, for slots whose lease ended and wake-ups that were lost. */
const TICK_MS = 1000
/** Dispatch rounds one call runs at most, when wake-ups arrive while it releases. */
const MAX_ROUNDS = 8

export interface FairDeps {
  config: Config
  fair: FairStore
  logger: Logger
  clock: () => number
  /** Adds the BullMQ submit job of a released task. */
  send: (taskId: string) => Promise<void>
}

export class FairDispatcher {
  /** Callers with tasks waiting for a slot → how many, across replicas (kg_caller_submit_waiting). */
  async waiting (): Promise<Record<string, number>> { return await this.deps.fair.waiting() }

  /** Tasks this replica released into the submit queue, by caller (kg_caller_submits_total). */
  readonly released = new Map<string, number>()
  private running = false
  private again = false
  private timer?: NodeJS.Timeout
  /** Dispatch failures are logged once per outage (Redis away), not on every wake-up. */
  private failures?: FailureLog
  private stopped = false

  constructor (private readonly deps: FairDeps) {}

  /** A slot is held at most this long: a run's create and look-up, each within UPSTREAM_TIMEOUT_MS, and more. */
  get leaseMs (): number { return 3 * this.deps.config.upstream.timeoutMs + 10_000 }

  start (): void {
    // dispatch() never throws, so nothing here can reject unhandled.
    this.timer ??= setInterval(() => { this.dispatch().catch(() => {}) }, TICK_MS)
    this.timer.unref()
    this.dispatch().catch(() => {})
  }

  /** No more releases from this replica: a job added while its queue closes could fail and wait for reconciliation. */
  stop (): void {
    this.stopped = true
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
  }

  /** Puts a queued task in its caller's line and releases what may go; false when it was already in line. */
  async enqueue (taskId: string, caller: string): Promise<'queued' | 'waiting' | 'holds-slot'> {
    const queued = await this.deps.fair.enqueue(taskId, caller, this.deps.clock())
    await this.dispatch()
    return queued
  }

  /** A job's run ended: its slot goes to the next task in fair order. */
  async done (taskId: string): Promise<void> {
    await this.deps.fair.done(taskId)
    await this.dispatch()
  }

  /**
   * Releases tasks while slots are free. Calls that overlap on one replica fold into the running one; never throws
   * (the next wake-up, or the tick, tries again).
   */
  async dispatch (): Promise<void> {
    if (this.stopped) return
    if (this.running) { this.again = true; return }
    this.running = true
    const { config, fair, clock, logger, send } = this.deps
    const weights: Record<string, number> = {}
    for (const caller of Object.keys(config.callers.overrides)) {
      weights[caller] = limitsFor(config.callers, caller).weight
    }
    try {
      for (let round = 0; round < MAX_ROUNDS; round++) {
        this.again = false
        const cap = config.upstream.concurrency
        const out = await fair.release({
          now: clock(), cap, leaseMs: this.leaseMs, defaultWeight: config.callers.defaults.weight, weights, max: cap
        })
        for (const { taskId, caller } of out) {
          // A failed add leaves the slot to its lease and the task to reconciliation (see the header).
          await send(taskId).then(
            () => { this.released.set(caller, (this.released.get(caller) ?? 0) + 1) },
            (err: Error) => { logger.warn({ taskId, err: err.message }, 'could not queue a released task') }
          )
        }
        if (!this.again) break
      }
      this.failures?.ok()
    } catch (err) {
      this.failures ??= new FailureLog(logger, 'fair-share dispatch failed; the next wake-up tries again')
      this.failures.fail(err)
    } finally {
      this.running = false
    }
  }
}
