/**
 * Task retention (docs/API.md, "Retention"): a finished task is removed TASK_RETENTION_DAYS after it ended, with its
 * events, parked images, reference and Idempotency-Key records, its entries in every index, its deliveries and their
 * attempts, and its stored videos. Held tasks, tasks reconciliation still watches and tasks whose result copy is
 * pending stay (forget-18.lua judges, atomically).
 *
 * - A BullMQ job scheduler runs one `sweep` every RETENTION_SWEEP_MS on one replica at a time (as the other sweeps).
 *   A sweep looks at no more than SWEEP_SCAN entries of the `ended` set (terminal tasks by when they ended, kept by
 *   the transition script) and removes no more than SWEEP_BATCH tasks, so one run is bounded however long the list.
 * - Per task, in this order: ask the script whether it may go; delete its deliveries (each in one MULTI with its
 *   index entries) and its videos; then the script removes the task and its index entries in one step. A sweep cut
 *   short anywhere leaves a task that still exists (perhaps with fewer deliveries, or without its videos) and is
 *   taken again next time: no index ever names a missing task or delivery.
 * - Two sweeps at once (two replicas, a job run late) are safe: every step is idempotent and the script decides.
 */
import type { Logger } from 'pino'
import type { BlobStore } from '../blobs/index.ts'
import type { Config } from '../config/index.ts'
import type { RedisClient } from '../infra/redis.ts'
import type { TaskStore } from '../store/tasks.ts'
import type { WebhookStore } from '../store/webhooks.ts'
import { QueueJobs } from './base.ts'
import { videoKey } from './copy.ts'

export const RETENTION_QUEUE = 'retention'
/** Tasks one sweep removes at most. */
export const SWEEP_BATCH = 200
/** Entries of the ended set one sweep looks at, at most (tasks kept for now are stepped over). */
export const SWEEP_SCAN = 1000
/** How often a sweep runs: 200 tasks every 5 minutes is 57,600 a day. */
export const RETENTION_SWEEP_MS = 5 * 60_000
/** Terminal tasks the ended set lacks, looked for per sweep (see TaskStore.backfillEnded). */
const BACKFILL = 500

export interface RetentionDeps {
  config: Config
  store: TaskStore
  webhooks: WebhookStore
  blobs: BlobStore
  logger: Logger
  clock: () => number
  connection?: RedisClient
}

export interface SweepResult { removed: number, kept: number }

export class RetentionJobs extends QueueJobs<Record<string, never>> {
  constructor (private readonly deps: RetentionDeps) {
    super(RETENTION_QUEUE, { connection: deps.connection, prefix: deps.store.queuePrefix, logger: deps.logger })
  }

  async start (): Promise<void> {
    if (this.deps.config.taskRetentionMs === 0) {
      // Kept for ever: a scheduler left by an earlier start with retention on must not go on removing tasks.
      await this.queue.removeJobScheduler('sweep')
      return
    }
    await this.queue.upsertJobScheduler('sweep', { every: RETENTION_SWEEP_MS },
      { name: 'sweep', opts: { removeOnComplete: true, removeOnFail: 10 } })
    this.startWorker(async () => {
      const { removed, kept } = await this.sweep()
      return `removed ${removed}, kept ${kept}`
    }, { concurrency: 1 })
  }

  /** One bounded pass: removes up to `batch` tasks that ended more than TASK_RETENTION_DAYS ago. */
  async sweep (batch = SWEEP_BATCH, scan = SWEEP_SCAN): Promise<SweepResult> {
    const { store, config, clock } = this.deps
    if (config.taskRetentionMs === 0) return { removed: 0, kept: 0 }
    const found = await store.backfillEnded(BACKFILL)
    if (found > 0) this.log.info({ count: found }, 'filed finished tasks the ended set lacked for retention')
    const before = clock() - config.taskRetentionMs
    let removed = 0
    let kept = 0
    // Tasks kept for now stay in the set; the offset steps over them, so they cannot stall the ones behind.
    for (let looked = 0; looked < scan && removed < batch;) {
      const ids = await store.endedBefore(before, kept, Math.min(100, scan - looked))
      if (ids.length === 0) break
      looked += ids.length
      for (const id of ids) {
        if (removed >= batch) break
        if (await this.remove(id, before)) removed++
        else kept++
      }
    }
    if (removed > 0) this.log.info({ removed, kept }, 'removed finished tasks past TASK_RETENTION_DAYS')
    return { removed, kept }
  }

  /** Removes one task if it may go; true when it is gone (by this call or another). */
  private async remove (id: string, before: number): Promise<boolean> {
    const { store, webhooks, blobs } = this.deps
    const task = await store.get(id)
    if (task === null) {
      await store.leaveEnded(id)
      return true
    }
    const may = await store.forget(task, before, true)
    if (may === 'gone') return true
    if (may !== 'removed' && may !== 'deliveries') return false
    // Bounded: a task has one delivery per event and destination; 10 rounds of 100 is more than any has.
    for (let round = 0; round < 10 && await webhooks.forgetTaskDeliveries(id) > 0; round++);
    if (task.storedAt !== null && !task.storedExpired) {
      for (let i = 0; i < (task.result?.videos.length ?? 0); i++) await blobs.delete(videoKey(id, i))
    }
    const outcome = await store.forget(task, before)
    return outcome === 'removed' || outcome === 'gone'
  }
}
