/**
 * Reconciliation: every task reaches its true terminal state even when callbacks are lost, late or forged.
 *
 * - A BullMQ job scheduler runs one `sweep` every RECONCILE_INTERVAL_MS, on one replica at a time. It takes up to
 *   RECONCILE_BATCH tasks quiet for RECONCILE_AFTER_MS (the `open` sorted set, scored by last activity) and
 *   queues a `check` for each, spread over the interval with random delays, under a queue-wide rate limit of
 *   RECONCILE_QPS: 10,000 open tasks become a steady trickle of queries, not a burst.
 * - A `check` asks CometAPI and applies what it says through the one forward-only transition. "Not found" and
 *   timeouts are "unknown", never "failed". A task past TASK_DEADLINE_MS fails with UPSTREAM_DEADLINE.
 * - A terminal callback is only a hint: the callback route queues a `confirm` check, and the query's answer is
 *   what gets applied.
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
import type { SubmitJobs } from './submit.ts'

export const RECONCILE_QUEUE = 'reconcile'

interface CheckData { taskId?: string }

export interface ReconcileDeps {
  config: Config
  store: TaskStore
  upstream: UpstreamAdapter
  submit: SubmitJobs
  logger: Logger
  clock: () => number
  connection?: RedisClient
}

export type CheckOutcome = 'gone' | 'terminal' | 'requeued' | 'applied' | 'unchanged' | 'unknown' | 'deadline'

export class ReconcileJobs extends QueueJobs<CheckData> {
  constructor (private readonly deps: ReconcileDeps) {
    super(RECONCILE_QUEUE, { connection: deps.connection, prefix: deps.store.queuePrefix, logger: deps.logger })
  }

  async start (): Promise<void> {
    const { config } = this.deps
    await this.queue.upsertJobScheduler('sweep', { every: config.reconcile.intervalMs },
      { name: 'sweep', opts: { removeOnComplete: true, removeOnFail: 100 } })
    this.startWorker(async job => await this.process(job), {
      concurrency: 4,
      limiter: { max: config.reconcile.qps, duration: 1000 }
    })
  }

  /** Queues a check of one task; `confirm` ones (from callbacks) run at once, beside any scheduled check. */
  async check (taskId: string, opts: { delayMs?: number, confirm?: boolean } = {}): Promise<void> {
    await this.queue.add('check', { taskId }, {
      jobId: `${opts.confirm === true ? 'confirm' : 'check'}-${taskId}`,
      delay: opts.delayMs ?? 0,
      attempts: 3,
      backoff: { type: 'exponential', delay: 1000 },
      removeOnComplete: true,
      removeOnFail: 1000
    })
  }

  private async process (job: Job<CheckData>): Promise<string> {
    if (job.name === 'sweep') return `swept ${await this.sweep()}`
    return await this.checkTask(job.data.taskId ?? '')
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

  /** Brings one task up to date with upstream. */
  async checkTask (taskId: string): Promise<CheckOutcome> {
    const { store, config, clock, submit } = this.deps
    const task = await store.get(taskId)
    if (task === null) return 'gone'
    if (isTerminal(task.status)) return 'terminal'
    const now = clock()
    const pastDeadline = now - task.createdAt > config.reconcile.deadlineMs

    if (task.status === 'queued' && task.submitSentAt === null) {
      if (pastDeadline) return await this.deadline(task)
      await submit.submit(task.id)
      return 'requeued'
    }

    let up: UpstreamTask | null
    try {
      // Before our create answer arrived we only know the external id; both ids reach the same task upstream.
      up = await this.deps.upstream.query(task.kind, task.upstream?.task_id ?? task.externalTaskId)
    } catch (err) {
      if (!(err instanceof UpstreamError)) throw err
      this.log.info({ taskId, code: err.code }, 'reconcile query failed: state unknown')
      return pastDeadline ? await this.deadline(task) : 'unknown'
    }
    if (up === null) {
      // Right after a create CometAPI may not know the task yet: "not found" is not "failed".
      if (task.status === 'queued' && !pastDeadline) await submit.submit(task.id)
      return pastDeadline ? await this.deadline(task) : 'unknown'
    }
    const outcome = await applyUpstream(store, task.id, up, now, config.publicBaseUrl ?? '')
    if (outcome.applied) return 'applied'
    return pastDeadline ? await this.deadline(task) : 'unchanged'
  }

  private async deadline (task: TaskRecord): Promise<CheckOutcome> {
    const { store, config } = this.deps
    const outcome = await store.transition(task.id, t => isTerminal(t.status)
      ? null
      : {
          to: 'failed',
          error: { code: 'UPSTREAM_DEADLINE', message: `not finished within ${config.reconcile.deadlineMs} ms` }
        })
    if (outcome.applied) {
      await store.dropParked(task.id)
      this.log.warn({ taskId: task.id }, 'task failed: deadline passed')
    }
    return 'deadline'
  }
}
