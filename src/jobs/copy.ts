/**
 * The result copy ("keeps the bytes"): when a task succeeds, copy each result video into the blob store before
 * Kling's URL expires. One BullMQ job per task (job id = task id); the download goes through the SSRF-guarded agent,
 * with a size cap, a deadline and a Content-Length check. The task's terminal event is not held back: a
 * `video.stored` event follows when the copy is done. The copy is served by `GET /v1/videos/:id/content` from the
 * blob store (`src/blobs`); MIRROR_* variables configure the download.
 *
 * Keeping the result until it is safe (docs/DESIGN.md, "Where the bytes go"):
 * - a failed copy is retried until the video's `upstream_expires_at`, not for a fixed number of attempts: from
 *   MIRROR_RETRY_BASE_MS, doubling, at most MIRROR_RETRY_MAX_MS apart (≤ 15 minutes, so one attempt falls inside
 *   the last 15 minutes of the URL);
 * - a sweep (every MIRROR_SWEEP_INTERVAL_MS, one replica) queues again every succeeded task not stored yet, from the
 *   `copying` set the transition script keeps with the status (and a slow walk of the succeeded index for tasks the
 *   set lacks), so a copy job lost with Redis, or left failed by an older version, is not the end of the result;
 * - once the URL has expired (it answers 403/404/410 within 15 minutes of `upstream_expires_at` or after it, or any
 *   attempt fails after it) the copy gives up: the video gets a `copy_error` (UPSTREAM_URL_EXPIRED), the task a
 *   `video.copy_failed` event (its last), and its content answers 410.
 */
import type { Job } from 'bullmq'
import { pipeline, Transform } from 'node:stream'
import type { Logger } from 'pino'
import { request, type Agent } from 'undici'
import type { BlobStore } from '../blobs/index.ts'
import type { Config } from '../config/index.ts'
import { copyFailed, type ResultVideo, type TaskError, type TaskRecord } from '../domain/task.ts'
import { UPSTREAM_RETENTION_MS } from '../domain/upstream-state.ts'
import type { RedisClient } from '../infra/redis.ts'
import { createGuardedAgent } from '../notify/ssrf.ts'
import type { TaskStore } from '../store/tasks.ts'
import { QueueJobs } from './base.ts'

export const COPY_QUEUE = 'copy'
/** A refusal this close to `upstream_expires_at` (or after it) means the URL has expired. */
export const EXPIRY_MARGIN_MS = 15 * 60_000
/** Tasks a sweep takes at a time. */
const SWEEP_BATCH = 500
/** BullMQ needs a number: the attempts are in fact bounded by the URL's expiry (30 days / 10 min ≈ 4,300). */
const ATTEMPTS = 1_000_000
/**
 * First attempts a replica runs at once in its copy reader, without a job (the worker's own concurrency); the reader
 * waits for one to end before it starts another, as the worker would.
 */
const INLINE_COPIES = 2

/** The upstream answered a download with this status. */
class DownloadRefused extends Error {
  constructor (readonly status: number) { super(`download answered ${status}`) }
}

/** The delay before copy attempt `attemptsMade + 1`: doubling from `baseMs`, at most `maxMs`, jittered. */
export function copyRetryDelay (attemptsMade: number, baseMs: number, maxMs: number): number {
  const step = Math.min(baseMs * 2 ** Math.max(0, attemptsMade - 1), maxMs)
  return Math.round(step / 2 + Math.random() * step / 2)
}

export interface CopyDeps {
  config: Config
  store: TaskStore
  blobs: BlobStore
  logger: Logger
  clock: () => number
  connection?: RedisClient
}

export const videoKey = (taskId: string, index: number): string => `videos/${taskId}/${index}.mp4`

/** A copy job's data; `tried`: attempts made before the job (the reader's first attempt). */
interface CopyData { taskId: string, tried?: number }

export class CopyJobs extends QueueJobs<CopyData> {
  private readonly agent: Agent
  /** First attempts running in this replica's copy reader (onEvent). */
  private readonly inline = new Set<Promise<void>>()
  private closing = false

  constructor (private readonly deps: CopyDeps) {
    super(COPY_QUEUE, { connection: deps.connection, prefix: deps.store.queuePrefix, logger: deps.logger })
    this.agent = createGuardedAgent({
      allowPrivate: deps.config.copy.allowPrivate,
      timeoutMs: deps.config.copy.timeoutMs
    })
  }

  async start (): Promise<void> {
    const { config } = this.deps
    if (config.copy.retentionMs > 0) {
      await this.queue.upsertJobScheduler('expire', { every: Math.min(config.copy.retentionMs, 3600_000) },
        { name: 'expire', opts: { removeOnComplete: true, removeOnFail: 10 } })
    }
    await this.queue.upsertJobScheduler('sweep', { every: config.copy.sweepIntervalMs },
      { name: 'sweep', opts: { removeOnComplete: true, removeOnFail: 10 } })
    this.startWorker(async job => {
      if (job.name === 'expire') return await this.expire()
      if (job.name === 'sweep') return `requeued ${await this.sweep()}`
      return await this.copy(job)
    }, {
      concurrency: 2,
      settings: {
        // A job queued after a failed first attempt in the reader (`tried`) goes on doubling from there.
        backoffStrategy: (attemptsMade: number, _type?: string, _err?: Error, job?: { data: CopyData }) =>
          copyRetryDelay(attemptsMade + (job?.data.tried ?? 0), config.copy.retryBaseMs, config.copy.retryMaxMs)
      }
    })
  }

  /**
   * The `copy` reader of the event stream: a succeeded task gets its result copied. The first attempt runs here, at
   * once, without a BullMQ job (a job costs ~50 Redis commands and ~7 round trips); only a failed one is queued, due
   * when the job's first retry would have been. While INLINE_COPIES run, the reader waits for one to end (each is
   * bounded by MIRROR_TIMEOUT_MS); once the replica closes, copies are queued instead. Not awaited, so the entry is
   * acknowledged while it runs: the task stays in the copying set until stored or given up, and if this replica dies
   * meanwhile the sweep queues it again. Safe to call twice.
   */
  async onEvent (event: { type: string, task_id: string }): Promise<void> {
    if (event.type !== 'video.succeeded') return
    while (!this.closing && this.inline.size >= INLINE_COPIES) await Promise.race(this.inline)
    if (this.closing) return await this.enqueue(event.task_id)
    const run: Promise<void> = this.firstAttempt(event.task_id).finally(() => { this.inline.delete(run) })
    this.inline.add(run)
  }

  private async firstAttempt (taskId: string): Promise<void> {
    const { config, store } = this.deps
    // The sweep queues tasks of the copying set that were not queued within its interval: a download that runs
    // longer is marked as queued again now and then, so the sweep does not start a second copy beside this one.
    const keep = setInterval(() => { store.markCopyQueued(taskId).catch(() => {}) }, config.copy.sweepIntervalMs / 2)
    keep.unref()
    try {
      await this.copy({ data: { taskId }, attemptsMade: 0 })
    } catch {
      // copy() logged why; from here on it is the job's, on the schedule.
      const delay = copyRetryDelay(1, config.copy.retryBaseMs, config.copy.retryMaxMs)
      await this.enqueue(taskId, { delay, tried: 1 }).catch((err: Error) => {
        this.log.warn({ taskId, err: err.message }, 'could not queue the result copy; the sweep queues it again')
      })
    } finally {
      clearInterval(keep)
    }
  }

  async enqueue (taskId: string, after: { delay: number, tried: number } = { delay: 0, tried: 0 }): Promise<void> {
    await this.queue.add('copy', { taskId, ...(after.tried > 0 && { tried: after.tried }) }, {
      jobId: `copy-${taskId}`,
      attempts: ATTEMPTS,
      backoff: { type: 'custom' },
      ...(after.delay > 0 && { delay: after.delay }),
      removeOnComplete: true,
      // A job that ends failed anyway must not stand in the way of the sweep's next add (same job id).
      removeOnFail: true
    })
  }

  /**
   * First attempts still running get `graceMs` to finish (a copy cut short is the sweep's to queue again), then the
   * worker and queue close as every family's do.
   */
  override async close (graceMs = 5000): Promise<void> {
    this.closing = true
    let timer: NodeJS.Timeout | undefined
    const bound = new Promise<void>(resolve => { timer = setTimeout(resolve, graceMs) })
    await Promise.race([Promise.allSettled([...this.inline]), bound])
    clearTimeout(timer)
    await super.close(graceMs)
  }

  /**
   * Queues the copy again for succeeded tasks not stored yet and not queued within the last sweep interval (a
   * second add of a live job is a no-op); fills the `copying` set from older tasks first. Returns how many.
   */
  async sweep (): Promise<number> {
    const { store, clock, config } = this.deps
    const found = await store.backfillCopying(SWEEP_BATCH)
    if (found > 0) this.log.info({ count: found }, 'found succeeded tasks not stored that the copying set lacked')
    const ids = await store.copyBacklog(clock() - config.copy.sweepIntervalMs, SWEEP_BATCH)
    for (const id of ids) {
      const jobId = `copy-${id}`
      const state = await this.queue.getJobState(jobId)
      // An older version gave up after 8 attempts and kept the failed job, which would make the add a no-op.
      if (state === 'failed' || state === 'completed') await this.queue.remove(jobId)
      await this.enqueue(id)
    }
    if (ids.length > 0) this.log.debug({ count: ids.length }, 'queued the copy of results not stored yet')
    return ids.length
  }

  protected override async closed (): Promise<void> {
    await this.agent.close()
  }

  /**
   * Copies every video of a succeeded task that is not stored yet, then records it with a `video.stored` event; a
   * failure is thrown (BullMQ retries) until the video's URL has expired, and then recorded as the task's last event.
   */
  async copy (job: Pick<Job<CopyData>, 'data'> & { attemptsMade?: number }): Promise<string> {
    const { store, blobs, clock } = this.deps
    const task = await store.get(job.data.taskId)
    if (task === null || task.status !== 'succeeded' || task.storedAt !== null || copyFailed(task)) {
      // The walk of the succeeded index may have added it just as it was stored: the sweep must not come back.
      await store.leaveCopying(job.data.taskId)
      return 'nothing to do'
    }
    const videos = task.result?.videos ?? []
    const lost = new Map<number, TaskError>()
    for (const [i, video] of videos.entries()) {
      if (await blobs.stat(videoKey(task.id, i)) !== null) continue
      try {
        await this.download(video.upstream_url, videoKey(task.id, i))
      } catch (err) {
        const error = this.expired(task, video, err as Error)
        if (error === null) {
          const attempt = (job.attemptsMade ?? 0) + (job.data.tried ?? 0) + 1
          this.log.info({ taskId: task.id, video: i, attempt, err: (err as Error).message },
            'result copy failed; retrying until the upstream URL expires')
          throw err
        }
        lost.set(i, error)
      }
    }
    if (lost.size > 0) return await this.giveUp(task.id, lost)
    const now = clock()
    // The record read above is handed in: the download changed nothing in it, and the script checks it is current.
    await store.transition(task.id, t => t.status === 'succeeded' && t.storedAt === null
      ? { to: 'succeeded', storedAt: now }
      : null, { event: true, eventType: 'video.stored', current: task })
    this.log.info({ taskId: task.id, videos: videos.length }, 'result stored')
    return 'stored'
  }

  /** Why the copy of `video` can never succeed now (its URL has expired), or null while it still may. */
  private expired (task: TaskRecord, video: ResultVideo, err: Error): TaskError | null {
    const now = this.deps.clock()
    const given = Date.parse(video.upstream_expires_at ?? '')
    // A task stored before upstream_expires_at existed: Kling keeps results 30 days from about then.
    const expiresAt = Number.isNaN(given) ? task.updatedAt + UPSTREAM_RETENTION_MS : given
    const refused = err instanceof DownloadRefused && [403, 404, 410].includes(err.status)
    if (now < expiresAt && !(refused && now >= expiresAt - EXPIRY_MARGIN_MS)) return null
    return {
      code: 'UPSTREAM_URL_EXPIRED',
      message: `the upstream URL expired (at ${new Date(expiresAt).toISOString()}) before the video could be copied; ` +
        `the last attempt: ${err.message}`
    }
  }

  /** Records for good that some videos were not copied: each one's `copy_error`, and `video.copy_failed`. */
  private async giveUp (taskId: string, lost: Map<number, TaskError>): Promise<string> {
    const outcome = await this.deps.store.transition(taskId, t => {
      if (t.status !== 'succeeded' || t.storedAt !== null || copyFailed(t) || t.result === null) return null
      const videos = t.result.videos.map((v, i) => lost.has(i) ? { ...v, copy_error: lost.get(i) } : v)
      return { to: 'succeeded', result: { videos } }
    }, { event: true, eventType: 'video.copy_failed' })
    if (outcome.applied) {
      this.log.warn({ taskId, videos: [...lost.keys()] }, 'result copy given up: the upstream URL expired first')
    }
    return 'expired'
  }

  private async download (url: string, key: string): Promise<void> {
    const { config, blobs } = this.deps
    const res = await request(url, {
      dispatcher: this.agent,
      signal: AbortSignal.timeout(config.copy.timeoutMs),
      headers: { 'user-agent': 'kling-gateway-copy/1' }
    })
    if (res.statusCode !== 200) {
      await res.body.dump().catch(() => {})
      throw new DownloadRefused(res.statusCode)
    }
    const header = res.headers['content-length']
    const length = typeof header === 'string' && /^\d+$/.test(header) ? Number(header) : undefined
    if (length !== undefined && length > config.copy.maxBytes) {
      res.body.destroy()
      throw new Error(`video is ${length} bytes, over MIRROR_MAX_BYTES`)
    }
    let seen = 0
    const cap = new Transform({
      transform (chunk: Buffer, _enc, done) {
        seen += chunk.length
        done(seen > config.copy.maxBytes ? new Error('video is over MIRROR_MAX_BYTES') : null, chunk)
      }
    })
    // Not `.pipe()`: it does not pass errors on, so a download cut off (or timed out) midway would leave the put
    // waiting forever for the rest. pipeline() destroys `cap` with the body's error, and the body with `cap`'s.
    await blobs.put(key, pipeline(res.body, cap, () => {}), { contentType: 'video/mp4', size: length })
  }

  /** Deletes stored videos older than VIDEO_RETENTION_DAYS; their content answers 410 afterwards. */
  private async expire (): Promise<string> {
    const { store, blobs, clock, config } = this.deps
    const ids = await store.storedBefore(clock() - config.copy.retentionMs, 500)
    for (const id of ids) {
      const task = await store.get(id)
      for (let i = 0; i < (task?.result?.videos.length ?? 1); i++) await blobs.delete(videoKey(id, i))
      // Without an event: the task's state is the same, only its copy is gone (content answers 410).
      await store.transition(id, t => t.storedExpired ? null : { to: t.status, storedExpired: true }, { event: false })
    }
    return `expired ${ids.length}`
  }
}
