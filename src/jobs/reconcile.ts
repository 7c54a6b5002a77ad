/**
 * Reconciliation: every task reaches its true terminal state even when callbacks are lost, late or forged.
 *
 * - A BullMQ job scheduler runs one `sweep` every RECONCILE_INTERVAL_MS, on one replica at a time. It takes up to
 *   RECONCILE_BATCH tasks quiet for RECONCILE_AFTER_MS (the `open` sorted set, scored by last activity) and
 *   queues a `check` for each, spread over the interval with random delays, under a queue-wide rate limit of
 *   RECONCILE_QPS: 10,000 open tasks become a steady trickle of queries, not a burst.
 * - A `check` asks CometAPI and applies what it says through the one forward-only transition. "Not found" and
 *   timeouts are "unknown", never "failed". A task past TASK_DEADLINE_MS fails with UPSTREAM_DEADLINE, with two
 *   exceptions: a task whose create may be upstream but is unconfirmed (`submit_sent_at` set, no upstream id) is
 *   held instead (src/jobs/hold.ts), and a queued task never sent waits while the account is paused.
 * - A task failed for its deadline that upstream knows stays watched for another TASK_DEADLINE_MS: if upstream
 *   then reports success, the task becomes `succeeded` and its result is kept (the one exception to forward-only,
 *   `lateSuccess` in src/domain/upstream-state.ts).
 * - Held tasks are looked up on every sweep, and adopted once upstream finds them.
 * - The `pause-check` scheduler runs the account pause's periodic check (src/jobs/pause.ts).
 * - A terminal callback is only a hint: the callback route queues a `confirm` check, and the query's answer is
 *   what gets applied. Confirms have a queue of their own (CONFIRM_QUEUE), outside RECONCILE_QPS: that cap spreads
 *   the sweep's queries, while confirms come at upstream's pace (one per callback that needs one, deduplicated by
 *   task while queued), and a task's webhook waits on its confirm: behind a sweep's backlog, at 50 finishing tasks a
 *   second, they waited tens of seconds.
 * - A queued task whose submit job was lost (a crash between storing it and queueing it) is queued again.
 */
import type { Job } from 'bullmq'
import type { Logger } from 'pino'
import { QueueJobs } from './base.ts'
import type { Config } from '../config/index.ts'
import { isTerminal, type TaskRecord } from '../domain/task.ts'
import type { RedisClient } from '../infra/redis.ts'
import type { TaskStore } from '../store/tasks.ts'
import { UpstreamError, type UpstreamTask } from '../upstream/client.ts'
import type { UpstreamAdapter } from '../upstream/adapter.ts'
import { applyUpstream } from './apply.ts'
import { holdTask } from './hold.ts'
import type { UpstreamPause } from './pause.ts'
import type { SubmitJobs } from './submit.ts'

export const RECONCILE_QUEUE = 'reconcile'
export const CONFIRM_QUEUE = 'confirm'
/** Confirming queries in flight at once per replica. */
const CONFIRM_CONCURRENCY = 16
/** Tasks a replica remembers a confirming query for (`confirmMessage`), and for how long. */
const CONFIRMING_REMEMBERED = 10_000
const CONFIRMING_FOR_MS = 30_000

interface CheckData {
  taskId?: string
  /** The upstream id a callback named, for a task whose own create never told us one (a look-up by it). */
  upstreamTaskId?: string
}

export interface ReconcileDeps {
  config: Config
  store: TaskStore
  upstream: UpstreamAdapter
  submit: SubmitJobs
  logger: Logger
  clock: () => number
  connection?: RedisClient
  pause: UpstreamPause
}

export type CheckOutcome =
  | 'gone' | 'terminal' | 'requeued' | 'applied' | 'unchanged' | 'unknown' | 'deadline' | 'held' | 'paused'

/** The queue of `confirm` checks: the same check, run by ReconcileJobs, without the sweep's rate limit. */
export class ConfirmJobs extends QueueJobs<CheckData> {
  constructor (deps: ReconcileDeps, private readonly run: (job: Job<CheckData>) => Promise<string>) {
    super(CONFIRM_QUEUE, { connection: deps.connection, prefix: deps.store.queuePrefix, logger: deps.logger })
  }

  start (): void {
    this.startWorker(this.run, { concurrency: CONFIRM_CONCURRENCY })
  }
}

export class ReconcileJobs extends QueueJobs<CheckData> {
  readonly confirms: ConfirmJobs

  constructor (private readonly deps: ReconcileDeps) {
    super(RECONCILE_QUEUE, { connection: deps.connection, prefix: deps.store.queuePrefix, logger: deps.logger })
    this.confirms = new ConfirmJobs(deps, async job => await this.process(job))
  }

  async start (): Promise<void> {
    const { config } = this.deps
    await this.queue.upsertJobScheduler('sweep', { every: config.reconcile.intervalMs },
      { name: 'sweep', opts: { removeOnComplete: true, removeOnFail: 100 } })
    await this.queue.upsertJobScheduler('pause-check', { every: config.upstream.pauseCheckMs },
      { name: 'pause-check', opts: { removeOnComplete: true, removeOnFail: 100 } })
    this.startWorker(async job => await this.process(job), {
      concurrency: 4,
      limiter: { max: config.reconcile.qps, duration: 1000 }
    })
    this.confirms.start()
  }

  override async close (graceMs?: number): Promise<void> {
    await Promise.all([super.close(graceMs), this.confirms.close(graceMs)])
  }

  /**
   * Queues a check of one task; `confirm` ones (from callbacks) run at once, beside any scheduled check, and may
   * carry the upstream id the callback named.
   */
  async check (taskId: string, opts: { delayMs?: number, confirm?: boolean, upstreamTaskId?: string } = {}):
  Promise<void> {
    const queue = opts.confirm === true ? this.confirms.queue : this.queue
    await queue.add('check', { taskId, upstreamTaskId: opts.upstreamTaskId }, {
      jobId: `${opts.confirm === true ? 'confirm' : 'check'}-${taskId}`,
      delay: opts.delayMs ?? 0,
      attempts: 3,
      backoff: { type: 'exponential', delay: 1000 },
      removeOnComplete: true,
      removeOnFail: 1000
    })
  }

  /**
   * The callback message that each task had a confirming query queued for, here, and when: CometAPI repeats a
   * callback many times, and the query may word the message otherwise (or not give it yet), so the stored message
   * cannot tell that it was asked already. Asked again after CONFIRMING_FOR_MS (upstream may have caught up), or
   * at once when the query learned nothing; not once per repeat: with confirms running at once, forgetting it
   * whenever the query ran made every repeat a query. Bounded, and only a saving: forgetting costs one more query.
   */
  private readonly confirming = new Map<string, { message: string, at: number }>()

  /** Queues a confirming query for a callback's status message, unless one for the same message was just queued. */
  async confirmMessage (taskId: string, message: string): Promise<void> {
    const now = this.deps.clock()
    const asked = this.confirming.get(taskId)
    if (asked !== undefined && asked.message === message && now - asked.at < CONFIRMING_FOR_MS) return
    if (this.confirming.size >= CONFIRMING_REMEMBERED) this.confirming.clear()
    const entry = { message, at: now }
    this.confirming.set(taskId, entry)
    try {
      await this.check(taskId, { confirm: true })
    } catch (err) {
      // Not queued after all (Redis unavailable): the next callback with this message must try again.
      if (this.confirming.get(taskId) === entry) this.confirming.delete(taskId)
      throw err
    }
  }

  private async process (job: Job<CheckData>): Promise<string> {
    if (job.name === 'sweep') return `swept ${await this.sweep()}`
    if (job.name === 'pause-check') return await this.deps.pause.check()
    const taskId = job.data.taskId ?? ''
    const outcome = await this.checkTask(taskId, job.data.upstreamTaskId)
    // A confirm that learned nothing (not found, the look-up failed) lets the next callback ask again at once.
    if (outcome === 'unknown' && job.id?.startsWith('confirm-') === true) this.confirming.delete(taskId)
    return outcome
  }

  /** Queues checks for the tasks that have been quiet too long; returns how many. */
  async sweep (): Promise<number> {
    const { store, config, clock } = this.deps
    const quietSince = clock() - config.reconcile.afterMs
    const ids = await store.quietTasks(quietSince, config.reconcile.batch)
    for (const id of ids) await this.check(id, { delayMs: Math.floor(Math.random() * config.reconcile.intervalMs) })
    // Images parked by creates that failed in a way that could not free them (Redis gone mid-request).
    const freed = await store.releaseUnclaimedParked()
    if (freed > 0) this.log.info({ count: freed }, 'freed images no stored task took over')
    if (ids.length > 0) this.log.debug({ count: ids.length }, 'queued checks of quiet tasks')
    return ids.length
  }

  /**
   * Brings one task up to date with upstream. `named`: the upstream id a callback gave for a task we know no
   * upstream id of (its create's answer was lost, or its look-up by external id does not work): it is asked for by
   * that id, and adopted only if upstream's answer does not name another external_task_id.
   */
  async checkTask (taskId: string, named?: string): Promise<CheckOutcome> {
    const { store, config, clock, submit } = this.deps
    const task = await store.get(taskId)
    if (task === null) return 'gone'
    const now = clock()
    if (isTerminal(task.status)) return await this.watchLate(task, now)
    const pastDeadline = now - task.createdAt > config.reconcile.deadlineMs
    // A create may be on the wire or upstream, and nothing confirms it yet: a deadline must not fail it.
    const unconfirmed = task.status === 'queued' && task.submitSentAt !== null && task.upstream === null

    if (task.status === 'queued' && task.submitSentAt === null) {
      if (!pastDeadline) {
        await submit.submit(task.id)
        return 'requeued'
      }
      // Never sent, and not sendable while the account is paused: it waits for the account, not the clock.
      if (await this.deps.pause.state() !== null) return 'paused'
      return await this.deadline(task)
    }

    let up: UpstreamTask | null
    try {
      // Before our create answer arrived we only know the external id; both ids reach the same task upstream.
      up = await this.deps.upstream.query(task.kind, task.upstream?.task_id ?? named ?? task.externalTaskId)
      if (up !== null && up.externalTaskId !== null && up.externalTaskId !== task.externalTaskId) {
        this.log.warn({ taskId, upstreamTaskId: up.taskId }, 'upstream task named for this one is another\'s')
        up = null
      }
    } catch (err) {
      if (!(err instanceof UpstreamError)) throw err
      // An account problem is logged once, by the pause, not once per task.
      if (err.account !== null) await this.deps.pause.trip(err)
      else this.log.info({ taskId, code: err.code }, 'reconcile query failed: state unknown')
      return await this.unknown(task, pastDeadline, unconfirmed, `the look-up failed: ${err.code}: ${err.message}`)
    }
    if (up === null) {
      // Right after a create CometAPI may not know the task yet: "not found" is not "failed". A held task is not
      // handed back to the submit job: only finding it, or an operator, ends a hold.
      if (task.status === 'queued' && task.attention === null && !pastDeadline) await submit.submit(task.id)
      return await this.unknown(task, pastDeadline, unconfirmed, 'upstream does not find it by its external_task_id')
    }
    const outcome = await applyUpstream(store, task.id, up, now, config.publicBaseUrl ?? '', task)
    if (outcome.applied) {
      if (task.attention !== null) this.log.warn({ taskId, upstreamTaskId: up.taskId }, 'held task found upstream')
      return 'applied'
    }
    return pastDeadline && !unconfirmed ? await this.deadline(task) : 'unchanged'
  }

  /** Nothing new from upstream: past the deadline a task fails, unless a create may be upstream (then held). */
  private async unknown (task: TaskRecord, pastDeadline: boolean, unconfirmed: boolean, why: string):
  Promise<CheckOutcome> {
    if (task.attention !== null) return 'held'
    if (!pastDeadline) return 'unknown'
    if (!unconfirmed) return await this.deadline(task)
    const { config, store, clock } = this.deps
    return await holdTask(store, this.log, task.id, 'DEADLINE_UNCONFIRMED',
      `not finished within ${config.reconcile.deadlineMs} ms while a create may be upstream; ${why}`, clock())
  }

  /**
   * A task failed for its deadline stays watched (in the open set) while upstream may still finish it: a success is
   * recorded with its result (`lateSuccess`); upstream's failure, or another TASK_DEADLINE_MS, ends the watch.
   */
  private async watchLate (task: TaskRecord, now: number): Promise<CheckOutcome> {
    const { store, config, upstream } = this.deps
    if (task.status !== 'failed' || task.error?.code !== 'UPSTREAM_DEADLINE' || task.upstream === null) {
      return 'terminal'
    }
    let up: UpstreamTask | null = null
    try {
      up = await upstream.query(task.kind, task.upstream.task_id)
    } catch (err) {
      if (!(err instanceof UpstreamError)) throw err
      await this.deps.pause.trip(err)
    }
    if (up?.status === 'succeed') {
      const outcome = await applyUpstream(store, task.id, up, now, config.publicBaseUrl ?? '')
      if (outcome.applied) {
        this.log.warn({ taskId: task.id, upstreamTaskId: up.taskId },
          'upstream finished a task after its deadline: it is succeeded, and its result is kept')
        return 'applied'
      }
    }
    if (up?.status === 'failed' || now - task.updatedAt > config.reconcile.deadlineMs) {
      // Off the work list: the transition without `watch` takes a terminal task out of the open set.
      await store.transition(task.id, t => t.status === 'failed' ? { to: 'failed' } : null, { event: false })
    }
    return 'terminal'
  }

  private async deadline (task: TaskRecord): Promise<CheckOutcome> {
    const { store, config } = this.deps
    const outcome = await store.transition(task.id, t => isTerminal(t.status) ||
      (t.status === 'queued' && t.submitSentAt !== null && t.upstream === null)
      ? null
      : {
          to: 'failed',
          error: { code: 'UPSTREAM_DEADLINE', message: `not finished within ${config.reconcile.deadlineMs} ms` },
          // Upstream has it: keep asking, so a late success is still recorded.
          watch: t.upstream !== null
        })
    if (outcome.applied) {
      await store.dropParked(task.id)
      this.log.warn({ taskId: task.id }, 'task failed: deadline passed')
    }
    return 'deadline'
  }
}
