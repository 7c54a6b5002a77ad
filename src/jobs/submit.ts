/**
 * The submit queue: gets each queued task accepted by CometAPI exactly once.
 *
 * - BullMQ job per task (jobId = task id, so a second enqueue is a no-op), global concurrency
 *   UPSTREAM_CONCURRENCY across every replica, exponential backoff with jitter, Retry-After honoured by
 *   rate-limiting the whole queue (a 429 is about the account, not the task).
 * - Before a create is sent, the task records `submit_sent_at`. An attempt that finds it set does not send: it
 *   asks upstream for the task by its `external_task_id` (fixed at create time) and adopts it if it is there. It
 *   sends again only when upstream still says "not found" SUBMIT_UNCONFIRMED_GRACE_MS after the uncertain create
 *   *ended* (a create that timed out re-stamps `submit_sent_at`), and even then the same external_task_id makes a
 *   second paid task impossible upstream (Kling refuses a duplicate). Asking again within the grace costs no attempt.
 * - Only the create's own failure may clear `submit_sent_at`: a failed query says nothing about an earlier create.
 * - Out of attempts while upstream may hold the task, the job looks once more after the grace: it adopts the task
 *   or fails ours with UPSTREAM_UNAVAILABLE. It never leaves a task `queued` with no job behind it.
 * - The mark is made durable (the deployment's rule: WAIT for replicas, or the node's fsync) before the create is
 *   sent, so no failover or host crash can roll it back behind a paid upstream task.
 * - Base64 images never enter job data: the job carries the task id; images are read from the parked blobs.
 */
import { DelayedError, type Job } from 'bullmq'
import type { Logger } from 'pino'
import { QueueJobs } from './base.ts'
import { callbackBaseUrl, type Config } from '../config/index.ts'
import { callbackToken } from '../domain/callback-token.ts'
import { upstreamBody } from '../domain/create.ts'
import { applyUpstream } from './apply.ts'
import { cancelWithdrawn } from '../services/create.ts'
import type { TaskRecord } from '../domain/task.ts'
import type { RedisClient } from '../infra/redis.ts'
import type { TaskStore } from '../store/tasks.ts'
import { UpstreamError, type UpstreamTask } from '../upstream/client.ts'
import type { UpstreamAdapter } from '../upstream/adapter.ts'

export const SUBMIT_QUEUE = 'submit'

interface SubmitData {
  taskId: string
  /** Set when the last attempt failed while upstream may hold the task: the next run only looks, then decides. */
  finalLook?: { reason: string }
}

export interface SubmitDeps {
  config: Config
  store: TaskStore
  upstream: UpstreamAdapter
  logger: Logger
  clock: () => number
  /** A connection BullMQ may block on (maxRetriesPerRequest: null); none = no queue (OpenAPI generation). */
  connection?: RedisClient
}

/** Exponential backoff with full jitter between half and all of the step, or what upstream asked for. */
export function backoffDelay (attemptsMade: number, baseMs: number, err?: Error): number {
  if (err instanceof UpstreamError && err.retryAfterMs !== null) return err.retryAfterMs
  const step = Math.min(baseMs * 2 ** Math.max(0, attemptsMade - 1), 60_000)
  return Math.round(step / 2 + Math.random() * step / 2)
}

export class SubmitJobs extends QueueJobs<SubmitData> {
  constructor (private readonly deps: SubmitDeps) {
    super(SUBMIT_QUEUE, { connection: deps.connection, prefix: deps.store.queuePrefix, logger: deps.logger })
  }

  /**
   * Starts this replica's worker; the cap is global, so N replicas never exceed it together. A job cut short by
   * shutdown is stalled, picked up again by any replica, and finds `submit_sent_at` set, so it asks upstream
   * before sending anything.
   */
  async start (): Promise<void> {
    const { config } = this.deps
    await this.queue.setGlobalConcurrency(config.upstream.concurrency)
    this.startWorker(async (job, token) => await this.process(job, token), {
      concurrency: config.upstream.concurrency,
      settings: {
        backoffStrategy: (attemptsMade, _type, err) => backoffDelay(attemptsMade, config.upstream.retryBaseMs, err)
      }
    })
  }

  /** Queues a task for submission; safe to call again for the same task. */
  async submit (taskId: string): Promise<void> {
    await this.queue.add('submit', { taskId }, {
      jobId: taskId,
      attempts: this.deps.config.upstream.submitAttempts,
      backoff: { type: 'custom' },
      removeOnComplete: true,
      removeOnFail: { age: 7 * 24 * 3600 }
    })
  }

  private async process (job: Job<SubmitData>, token?: string): Promise<string> {
    const { store, upstream, config, clock } = this.deps
    const task = await store.get(job.data.taskId)
    if (task === null || task.status !== 'queued') return 'not-queued'
    if (task.withdrawn && task.submitSentAt === null) {
      return await cancelWithdrawn(store, task.id) ? 'withdrawn' : 'not-queued'
    }
    const attempt = job.attemptsMade + 1
    const lastAttempt = attempt >= (job.opts.attempts ?? 1)
    let sending = false

    try {
      if (task.submitSentAt !== null) {
        // An earlier attempt may have created it: ask before sending anything.
        const found = await upstream.query(task.kind, task.externalTaskId)
        if (found !== null) return await this.adopt(task, found)
        const graceLeft = task.submitSentAt + config.upstream.unconfirmedGraceMs - clock()
        if (graceLeft > 0) {
          // Right after a create upstream may not know the task yet: ask again soon, without spending an attempt.
          const wait = Math.min(graceLeft, backoffDelay(attempt, config.upstream.retryBaseMs))
          return await this.askAgain(job, token, wait)
        }
        if (job.data.finalLook !== undefined) {
          return await this.fail(
            task,
            'UPSTREAM_UNAVAILABLE',
            `gave up after ${attempt} attempts; upstream has no task for this request: ${job.data.finalLook.reason}`
          )
        }
        this.log.info({ taskId: task.id }, 'upstream still has no task for this external id: sending again')
      }

      // Guarded by `withdrawn`: a create that answered 503 without a key marks its task, and then it never goes.
      const claimed = await store.transition(
        task.id,
        t => t.status === 'queued' ? { to: 'queued', submitSentAt: clock() } : null,
        { event: false, requireEmpty: 'withdrawn' }
      )
      if (!claimed.applied) return 'not-queued'
      // The mark must survive a failover or a host crash before anything is paid for: a mark lost in a rollback
      // would let the next attempt send again instead of asking first. Not durable → nothing was sent: unmark.
      await store.durable().catch(async (err: Error) => {
        await store.transition(
          task.id,
          t => t.status === 'queued' ? { to: 'queued', submitSentAt: null } : null,
          { event: false }
        ).catch(() => {})
        throw err
      })
      const images = await store.parked(task.id)
      const body = upstreamBody(task.request, images, {
        callback_url: this.callbackUrl(task.id),
        external_task_id: task.externalTaskId
      })
      sending = true
      const created = await upstream.create(task.kind, body)
      return await this.adopt(task, created)
    } catch (err) {
      if (!(err instanceof UpstreamError)) throw err
      // Whether upstream may hold the task is for the create to say; a failed query leaves it as it was.
      const maybeUpstream = sending ? err.maybeCreated : task.submitSentAt !== null
      if (sending) {
        // Certainly nothing upstream: the next attempt may send without asking first. Maybe something: the grace
        // runs from now, when the call ended, not from when it was sent (a timeout can outlast the whole grace).
        await store.transition(
          task.id,
          t => t.status === 'queued' && t.submitSentAt !== null
            ? { to: 'queued', submitSentAt: err.maybeCreated ? clock() : null }
            : null,
          { event: false }
        )
      }
      if (!err.retryable) return await this.fail(task, err.code, err.message)
      if (lastAttempt && !maybeUpstream) {
        return await this.fail(task, 'UPSTREAM_UNAVAILABLE', `gave up after ${attempt} attempts: ${err.message}`)
      }
      if (lastAttempt) {
        // Out of attempts, but upstream may have the task: look again (after the grace), then adopt it or fail ours.
        const reason = sending ? err.message : (job.data.finalLook?.reason ?? err.message)
        await job.updateData({ ...job.data, finalLook: { reason } })
        this.log.warn(
          { taskId: task.id, code: err.code, attempt },
          'last submit attempt failed; asking upstream once more'
        )
        return await this.askAgain(job, token, backoffDelay(attempt, config.upstream.retryBaseMs, err))
      }
      this.log.warn(
        { taskId: task.id, code: err.code, attempt, retryAfterMs: err.retryAfterMs },
        'submit attempt failed; will retry'
      )
      if (err.httpStatus === 429 || err.code === 'KLING_1302' || err.code === 'KLING_1303') {
        // The whole account is limited: hold the queue for every replica, and put this job back for exactly as
        // long as upstream asked, without burning one of its attempts.
        const wait = err.retryAfterMs ?? backoffDelay(attempt, config.upstream.retryBaseMs)
        await this.worker?.rateLimit(wait)
        return await this.askAgain(job, token, wait)
      }
      throw err
    }
  }

  /** Runs the job again in `ms` without counting an attempt. */
  private async askAgain (job: Job<SubmitData>, token: string | undefined, ms: number): Promise<never> {
    await job.moveToDelayed(Date.now() + ms, token)
    throw new DelayedError()
  }

  /** Records the upstream task and moves ours to where upstream says it is. */
  private async adopt (task: TaskRecord, up: UpstreamTask): Promise<string> {
    const outcome = await applyUpstream(
      this.deps.store, task.id, up, this.deps.clock(), this.deps.config.publicBaseUrl ?? ''
    )
    this.log.info(
      { taskId: task.id, upstreamTaskId: up.taskId, applied: outcome.applied },
      'upstream accepted the task'
    )
    return 'submitted'
  }

  private async fail (task: TaskRecord, code: string, message: string): Promise<string> {
    const { store } = this.deps
    await store.transition(task.id, t => t.status === 'queued' ? { to: 'failed', error: { code, message } } : null)
    await store.dropParked(task.id)
    this.log.warn({ taskId: task.id, code }, 'submit failed for good')
    return 'failed'
  }

  private callbackUrl (taskId: string): string {
    const { config } = this.deps
    return `${callbackBaseUrl(config)}/callbacks/kling?token=${callbackToken(config.callbackSecret ?? '', taskId)}`
  }
}
