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
 * - A create whose outcome is unknown is never failed on the spot, even when upstream's answer is final (an
 *   unreadable 2xx): it is looked up first. When the look-up cannot answer (unsupported, or failing to the last
 *   attempt) past the grace, or upstream refuses a second create as a duplicate of one it cannot find, the task is
 *   *held* (src/jobs/hold.ts): neither failed nor sent again, for reconciliation and an operator.
 * - Out of attempts while upstream may hold the task, the job looks once more after the grace: it adopts the task,
 *   fails ours with UPSTREAM_UNAVAILABLE when upstream says it has none, or holds it. It never leaves a task
 *   `queued` with no job and no hold behind it.
 * - A refusal about the whole account (key, balance) fails nothing: the queue pauses (src/jobs/pause.ts) and the
 *   job waits with it, without spending an attempt.
 * - The mark is made durable (the deployment's rule: WAIT for replicas, or the node's fsync) before the create is
 *   sent, so no failover or host crash can roll it back behind a paid upstream task.
 * - Base64 images never enter job data: the job carries the task id; images are read from the parked blobs.
 * - Which queued task gets the next slot is the fair share's choice (src/jobs/fair.ts): `submit()` puts the task in
 *   its caller's line, and its job is added only when the dispatcher releases it. Nothing above changes: a job
 *   still runs the same way, whoever's it is.
 */
import { DelayedError, Worker, type Job } from 'bullmq'
import type { Logger } from 'pino'
import { QueueJobs } from './base.ts'
import { callbackBaseUrl, type Config } from '../config/index.ts'
import { callbackKeys, callbackToken, callbackTokenExpiry } from '../domain/callback-token.ts'
import { upstreamBodyParts } from '../domain/create.ts'
import { applyUpstream } from './apply.ts'
import { FairDispatcher } from './fair.ts'
import { holdTask } from './hold.ts'
import type { UpstreamPause } from './pause.ts'
import { cancelWithdrawn } from '../services/create.ts'
import type { TaskRecord } from '../domain/task.ts'
import type { RedisClient } from '../infra/redis.ts'
import type { TaskStore } from '../store/tasks.ts'
import type { FairStore } from '../store/fair.ts'
import { UpstreamError, type UpstreamTask } from '../upstream/client.ts'
import type { StreamedBody, UpstreamAdapter } from '../upstream/adapter.ts'

export const SUBMIT_QUEUE = 'submit'

/** Kling's (and a relay's) refusal of a create whose external_task_id it already has. */
const DUPLICATE_EXTERNAL_ID = /external[_ ]?task[_ ]?id.{0,40}\b(already|exists?|duplicat|used)/i

const reasonOf = (why: { code?: string, reason?: string, message?: string }): string =>
  why.reason ?? `${why.code ?? ''}: ${why.message ?? ''}`

interface SubmitData {
  taskId: string
  /** Set when the last attempt failed while upstream may hold the task: the next run only looks, then decides. */
  finalLook?: { reason: string }
  /**
   * Set when upstream answered a create in a way that is final but may have made the task (an unreadable 2xx):
   * the next runs look it up, and fail the task with this only once upstream says it has none.
   */
  unconfirmed?: { code: string, message: string }
}

/** What asking upstream for an earlier create by its external_task_id gave. */
type LookUp =
  | { kind: 'found', task: UpstreamTask }
  | { kind: 'missing' }
  | { kind: 'failed', error: UpstreamError }

export interface SubmitDeps {
  config: Config
  store: TaskStore
  upstream: UpstreamAdapter
  logger: Logger
  clock: () => number
  /** A connection BullMQ may block on (maxRetriesPerRequest: null); none = no queue (OpenAPI generation). */
  connection?: RedisClient
  pause: UpstreamPause
  /** The callers' lines for a submit slot (src/store/fair.ts). */
  fair: FairStore
}

/** Exponential backoff with full jitter between half and all of the step, or what upstream asked for. */
export function backoffDelay (attemptsMade: number, baseMs: number, err?: Error): number {
  if (err instanceof UpstreamError && err.retryAfterMs !== null) return err.retryAfterMs
  const step = Math.min(baseMs * 2 ** Math.max(0, attemptsMade - 1), 60_000)
  return Math.round(step / 2 + Math.random() * step / 2)
}

export class SubmitJobs extends QueueJobs<SubmitData> {
  /** Decides which queued task enters the queue next (src/jobs/fair.ts). */
  readonly fair: FairDispatcher

  constructor (private readonly deps: SubmitDeps) {
    super(SUBMIT_QUEUE, { connection: deps.connection, prefix: deps.store.queuePrefix, logger: deps.logger })
    this.fair = new FairDispatcher({
      config: deps.config, fair: deps.fair, logger: this.log, clock: deps.clock, send: async id => await this.add(id)
    })
  }

  /**
   * Starts this replica's worker; the cap is global, so N replicas never exceed it together. A job cut short by
   * shutdown is stalled, picked up again by any replica, and finds `submit_sent_at` set, so it asks upstream
   * before sending anything.
   */
  async start (): Promise<void> {
    const { config } = this.deps
    await this.queue.setGlobalConcurrency(config.upstream.concurrency)
    // Whatever a run ends in (done, retry, delay, pause), its fair-share slot goes to the next task in line.
    this.startWorker(async (job, token) => await this.process(job, token).finally(async () => {
      await this.fair.done(job.data.taskId).catch(() => {})
    }), {
      concurrency: config.upstream.concurrency,
      // Never reached: a limiter is what makes BullMQ honour the queue-wide rate limit set by rateLimit(), which
      // holds every replica's worker for a 429's Retry-After and while the account is paused.
      limiter: { max: 1_000_000, duration: 1000 },
      settings: {
        backoffStrategy: (attemptsMade, _type, err) => backoffDelay(attemptsMade, config.upstream.retryBaseMs, err)
      }
    })
    this.fair.start()
  }

  override async close (graceMs?: number): Promise<void> {
    this.fair.stop()
    await super.close(graceMs)
  }

  /**
   * Queues a task for submission, in its caller's line for a slot; safe to call again for the same task (a task
   * with a job, waiting in line or holding a slot is left as it is). `created`: the record its create has just
   * stored, which saves two reads (a new id has no job yet).
   */
  async submit (taskId: string, created?: TaskRecord): Promise<void> {
    if (created === undefined && await this.queue.getJob(taskId) !== undefined) return
    const task = created ?? await this.deps.store.get(taskId)
    if (task === null || task.status !== 'queued') return
    // No job, yet a slot: the replica that released it died before adding the job. The slot is this task's.
    if (await this.fair.enqueue(task.id, task.caller) === 'holds-slot') await this.add(task.id)
  }

  /** Adds the job of a task the fair share released. */
  private async add (taskId: string): Promise<void> {
    await this.queue.add('submit', { taskId }, {
      jobId: taskId,
      attempts: this.deps.config.upstream.submitAttempts,
      backoff: { type: 'custom' },
      removeOnComplete: true,
      removeOnFail: { age: 7 * 24 * 3600 }
    })
  }

  private async process (job: Job<SubmitData>, token?: string): Promise<string> {
    const { store, upstream, config, clock, pause } = this.deps
    const task = await store.get(job.data.taskId)
    if (task === null || task.status !== 'queued') return 'not-queued'
    if (task.withdrawn && task.submitSentAt === null) {
      return await cancelWithdrawn(store, task.id) ? 'withdrawn' : 'not-queued'
    }
    // Held for an operator: reconciliation keeps looking it up, and sending it again could pay twice.
    if (task.attention !== null) return 'held'
    const attempt = job.attemptsMade + 1
    const lastAttempt = attempt >= (job.opts.attempts ?? 1)

    let resending = false
    if (task.submitSentAt !== null) {
      // An earlier attempt may have created it: ask before sending anything.
      const looked = await this.lookUp(task)
      if (looked.kind === 'found') return await this.adopt(task, looked.task)
      if (looked.kind === 'failed' && looked.error.account !== null) return await this.keepOut()
      const graceLeft = task.submitSentAt + config.upstream.unconfirmedGraceMs - clock()
      if (graceLeft > 0) {
        // Right after a create upstream may not know the task yet: ask again soon, without spending an attempt.
        const wait = Math.min(graceLeft, backoffDelay(attempt, config.upstream.retryBaseMs))
        return await this.askAgain(job, token, wait)
      }
      if (looked.kind === 'failed') {
        const { error } = looked
        // A look-up that failed for a passing reason is tried again with backoff, to the last attempt.
        if (error.retryable && !lastAttempt) throw error
        const earlier = job.data.unconfirmed ?? job.data.finalLook
        return await holdTask(store, this.log, task.id, 'CREATE_UNCONFIRMED',
          `a create may have reached upstream${earlier === undefined ? '' : ` (${reasonOf(earlier)})`}, and the ` +
          `look-up by external_task_id could not confirm it: ${error.code}: ${error.message}`, clock())
      }
      // Upstream has no task for this external id well after the create ended: the create never made one.
      if (job.data.unconfirmed !== undefined) {
        return await this.fail(task, job.data.unconfirmed.code, job.data.unconfirmed.message)
      }
      if (job.data.finalLook !== undefined) {
        return await this.fail(
          task,
          'UPSTREAM_UNAVAILABLE',
          `gave up after ${attempt} attempts; upstream has no task for this request: ${job.data.finalLook.reason}`
        )
      }
      this.log.info({ taskId: task.id }, 'upstream still has no task for this external id: sending again')
      resending = true
    }

    const gate = await pause.gate()
    if (gate === 'closed') return await this.keepOut()
    let sentAt: number | null = null
    try {
      // Guarded by `withdrawn`: a create that answered 503 without a key marks its task, and then it never goes.
      // A task held meanwhile (reconciliation's deadline) is not sent either.
      const claimed = await store.transition(
        task.id,
        t => t.status === 'queued' && t.attention === null ? { to: 'queued', submitSentAt: clock() } : null,
        { event: false, requireEmpty: 'withdrawn', current: task }
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
      const body = await streamedBody(store, task, this.callbackUrl(task))
      sentAt = clock()
      const created = await upstream.create(task.kind, body)
      const adopted = await this.adopt(claimed.task, created)
      // The account works: a pause that began before this create was sent is over. Best effort: the next success or
      // check ends it otherwise.
      await pause.resume(gate === 'trial' ? 'a trial create was accepted' : 'a create was accepted', sentAt)
        .catch((err: Error) => { this.log.warn({ err: err.message }, 'could not end the account pause') })
      return adopted
    } catch (err) {
      if (!(err instanceof UpstreamError) || sentAt === null) throw err
      return await this.createFailed(job, token, task, err, { attempt, lastAttempt, resending, sentAt, gate })
    }
  }

  /** Asks upstream for an earlier create of `task` by its external_task_id; a failure is returned, not thrown. */
  private async lookUp (task: TaskRecord): Promise<LookUp> {
    try {
      const found = await this.deps.upstream.query(task.kind, task.externalTaskId)
      return found === null ? { kind: 'missing' } : { kind: 'found', task: found }
    } catch (err) {
      if (!(err instanceof UpstreamError)) throw err
      // An account problem is logged once, by the pause, not once per task.
      if (err.account !== null) await this.deps.pause.trip(err)
      else this.log.info({ taskId: task.id, code: err.code }, 'looking up an earlier create failed')
      return { kind: 'failed', error: err }
    }
  }

  /** What a create that upstream did not accept leads to: a retry, a look-up, a pause, a hold or a failure. */
  private async createFailed (job: Job<SubmitData>, token: string | undefined, task: TaskRecord, err: UpstreamError,
    at: { attempt: number, lastAttempt: boolean, resending: boolean, sentAt: number, gate: string }):
    Promise<string> {
    const { store, config, clock, pause } = this.deps
    const { attempt, lastAttempt } = at
    // Upstream refusing a second create for its external_task_id has the first one, though it cannot find it.
    const duplicate = at.resending && DUPLICATE_EXTERNAL_ID.test(err.message)
    // Certainly nothing upstream: the next attempt may send without asking first. Maybe something: the grace runs
    // from now, when the call ended, not from when it was sent (a timeout can outlast the whole grace).
    await store.transition(
      task.id,
      t => t.status === 'queued' && t.submitSentAt !== null
        ? { to: 'queued', submitSentAt: err.maybeCreated || duplicate ? clock() : null }
        : null,
      { event: false }
    )
    if (duplicate) {
      return await holdTask(store, this.log, task.id, 'CREATE_UNCONFIRMED', 'upstream refused a second create ' +
        `because its external_task_id exists, but does not find the task by it: ${err.code}: ${err.message}`, clock())
    }
    if (err.account !== null) {
      // About every task, not this one: pause the queue for all replicas; this task waits with the others.
      await pause.trip(err)
      return await this.keepOut()
    }
    // A trial that upstream judged on the task's own merits got past the account: the pause is over.
    if (at.gate === 'trial' && !err.retryable) await pause.resume('a trial create was answered', at.sentAt)
    if (!err.retryable && err.maybeCreated) {
      // Final, yet upstream may have made it: sending it again would not tell, looking it up will.
      await job.updateData({ ...job.data, unconfirmed: { code: err.code, message: err.message } })
      this.log.warn({ taskId: task.id, code: err.code }, 'create outcome unknown; looking it up before anything else')
      return await this.askAgain(job, token, backoffDelay(attempt, config.upstream.retryBaseMs))
    }
    if (!err.retryable) return await this.fail(task, err.code, err.message)
    if (lastAttempt && !err.maybeCreated) {
      return await this.fail(task, 'UPSTREAM_UNAVAILABLE', `gave up after ${attempt} attempts: ${err.message}`)
    }
    if (lastAttempt) {
      // Out of attempts, but upstream may have the task: look again (after the grace), then adopt it or fail ours.
      await job.updateData({ ...job.data, finalLook: { reason: err.message } })
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
      await this.queue.rateLimit(wait)
      return await this.askAgain(job, token, wait)
    }
    throw err
  }

  /** Puts the job back while the account is paused: the whole queue waits, and no attempt is spent. */
  private async keepOut (): Promise<never> {
    await this.queue.rateLimit(this.deps.pause.waitMs)
    throw Worker.RateLimitError()
  }

  /** Runs the job again in `ms` without counting an attempt. */
  private async askAgain (job: Job<SubmitData>, token: string | undefined, ms: number): Promise<never> {
    await job.moveToDelayed(Date.now() + ms, token)
    throw new DelayedError()
  }

  /** Records the upstream task and moves ours to where upstream says it is; `task` was just read (saves a read). */
  private async adopt (task: TaskRecord, up: UpstreamTask): Promise<string> {
    const outcome = await applyUpstream(
      this.deps.store, task.id, up, this.deps.clock(), this.deps.config.publicBaseUrl ?? '', task
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

  private callbackUrl (task: TaskRecord): string {
    const { config } = this.deps
    const expires = callbackTokenExpiry(task.createdAt, config.reconcile.deadlineMs)
    return `${callbackBaseUrl(config)}/callbacks/kling?token=${callbackToken(callbackKeys(config), task.id, expires)}`
  }
}

const ENCODE_SLICE = 48 * 1024

/** Base64 characters (with padding) of `bytes` bytes. */
const base64Chars = (bytes: number) => 4 * Math.ceil(bytes / 3)

/**
 * The upstream body of `task`, streamed: the request's JSON around its parked images, each read from Redis a part at
 * a time as it is sent (a part of a streamed image is a multiple of 3 bytes, so its Base64 joins the next one's).
 * Its length is known before a byte is sent, from the parts' sizes (one round trip).
 */
async function streamedBody (store: TaskStore, task: TaskRecord, callbackUrl: string): Promise<StreamedBody> {
  const layout = await store.parkedLayout(task.id)
  const { pieces, images } = upstreamBodyParts(task.request, layout.keys(), {
    callback_url: callbackUrl,
    external_task_id: task.externalTaskId
  })
  const fields = images.map(pointer => layout.get(pointer) as string[])
  const sizes = await store.parkedSizes(task.id, fields.flat())
  let at = 0
  let length = pieces.reduce((n, piece) => n + Buffer.byteLength(piece), 0)
  for (const list of fields) {
    const own = sizes.slice(at, at + list.length)
    at += list.length
    if (own.slice(0, -1).some(n => n % 3 !== 0)) throw new Error(`task ${task.id}: a parked image's parts do not join`)
    length += own.reduce((n, size) => n + base64Chars(size), 0)
  }
  return {
    externalTaskId: task.externalTaskId,
    length,
    chunks: async function * () {
      for (let k = 0; k < pieces.length; k++) {
        yield pieces[k]
        for (const field of fields[k] ?? []) {
          const data = await store.parkedField(task.id, field)
          if (data === null) throw new Error(`task ${task.id}: a parked image part is gone`)
          // In slices of 48 KB (a multiple of 3): short-lived strings, not a 1 MB one per part for the old heap.
          for (let at = 0; at < data.length; at += ENCODE_SLICE) yield data.toString('base64', at, at + ENCODE_SLICE)
        }
      }
    }
  }
}
