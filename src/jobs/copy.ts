/**
 * The result copy ("keeps the bytes"): when a task succeeds, copy each result video into the blob store before
 * Kling's 30-day URL expires. One BullMQ job per task (job id = task id), retried with backoff; the download goes
 * through the SSRF-guarded agent, with a size cap, a deadline and a Content-Length check. The task's terminal event
 * is not held back: a `video.stored` event follows when the copy is done. The copy is served by
 * `GET /v1/videos/:id/content` from the blob store (`src/blobs`); MIRROR_* variables configure the download.
 */
import type { Job } from 'bullmq'
import { pipeline, Transform } from 'node:stream'
import type { Logger } from 'pino'
import { request, type Agent } from 'undici'
import type { BlobStore } from '../blobs/index.ts'
import type { Config } from '../config/index.ts'
import type { RedisClient } from '../infra/redis.ts'
import { createGuardedAgent } from '../notify/ssrf.ts'
import type { TaskStore } from '../store/tasks.ts'
import { QueueJobs } from './base.ts'

export const COPY_QUEUE = 'copy'

export interface CopyDeps {
  config: Config
  store: TaskStore
  blobs: BlobStore
  logger: Logger
  clock: () => number
  connection?: RedisClient
}

export const videoKey = (taskId: string, index: number): string => `videos/${taskId}/${index}.mp4`

export class CopyJobs extends QueueJobs<{ taskId: string }> {
  private readonly agent: Agent

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
    this.startWorker(
      async job => job.name === 'expire' ? await this.expire() : await this.copy(job),
      { concurrency: 2 }
    )
  }

  /** The `copy` reader of the event stream: a succeeded task gets its result copied. Safe to call twice. */
  async onEvent (event: { type: string, task_id: string }): Promise<void> {
    if (event.type === 'video.succeeded') await this.enqueue(event.task_id)
  }

  async enqueue (taskId: string): Promise<void> {
    await this.queue.add('copy', { taskId }, {
      jobId: `copy-${taskId}`,
      attempts: 8,
      backoff: { type: 'exponential', delay: 2000 },
      removeOnComplete: true,
      removeOnFail: 1000
    })
  }

  protected override async closed (): Promise<void> {
    await this.agent.close()
  }

  /** Copies every video of a succeeded task that is not stored yet, then records it with a `video.stored` event. */
  async copy (job: Pick<Job<{ taskId: string }>, 'data'>): Promise<string> {
    const { store, blobs, clock } = this.deps
    const task = await store.get(job.data.taskId)
    if (task === null || task.status !== 'succeeded' || task.storedAt !== null) return 'nothing to do'
    const videos = task.result?.videos ?? []
    for (const [i, video] of videos.entries()) {
      if (await blobs.stat(videoKey(task.id, i)) !== null) continue
      await this.download(video.upstream_url, videoKey(task.id, i))
    }
    const now = clock()
    await store.transition(task.id, t => t.status === 'succeeded' && t.storedAt === null
      ? { to: 'succeeded', storedAt: now }
      : null, { event: true, eventType: 'video.stored' })
    this.log.info({ taskId: task.id, videos: videos.length }, 'result stored')
    return 'stored'
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
      throw new Error(`download answered ${res.statusCode}`)
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
