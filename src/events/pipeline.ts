/**
 * The one event pipeline. Every event is appended to the `{prefix}:events` stream by the task scripts, in the
 * same atomic step as the change; these are its readers, each with a name, all started here:
 *
 * | reader     | kind         | runs on                 | does                                              |
 * | ---------- | ------------ | ----------------------- | ------------------------------------------------- |
 * | `webhooks` | group        | replicas with workers   | one signed delivery per subscribed destination     |
 * | `copy`     | group        | replicas with workers   | queues the result copy when a task succeeds       |
 * | `live`     | tail         | every replica           | feeds the SSE hub                                 |
 *
 * A new event type is one entry in `EVENT_TYPES` (src/domain/task.ts) and the code that appends it; a new reader
 * is one line below.
 */
import type { Logger } from 'pino'
import type { RedisClient } from '../infra/redis.ts'
import type { EventStream } from '../store/event-stream.ts'
import { GroupReader, TailReader, type EventHandler } from './readers.ts'

/** Events of one read the `webhooks` group fans out at once. */
const WEBHOOK_ENTRIES_AT_ONCE = 32

export interface PipelineDeps {
  stream: EventStream
  /** A new connection that may block (one per reader: a blocking read holds its connection). */
  connect: () => RedisClient
  logger: Logger
  clock: () => number
  webhooks: EventHandler
  copy: EventHandler
  live: EventHandler
  /** The `live` reader read again after failing. */
  liveResumed?: () => void
}

export class EventPipeline {
  private readonly groups: GroupReader[]
  private readonly tails: TailReader[]

  constructor (deps: PipelineDeps) {
    const group = (name: string, handle: EventHandler, concurrency?: number) =>
      new GroupReader(name, deps.stream, deps.connect(), deps.logger, handle, deps.clock, concurrency)
    // Webhooks: a fan-out waits for its first attempts (up to INLINE_WAIT_MS), so one slow receiver must not hold
    // the events behind it.
    this.groups = [group('webhooks', deps.webhooks, WEBHOOK_ENTRIES_AT_ONCE), group('copy', deps.copy)]
    this.tails = [new TailReader('live', deps.stream, deps.connect(), deps.logger, deps.live, deps.liveResumed)]
  }

  /**
   * Makes the consumer groups if they are not there. Every replica does this at start, workers or not, so each
   * group exists before the first event is written and no event is ever behind it.
   */
  async ensureGroups (): Promise<void> {
    for (const g of this.groups) await g.ensureGroup()
  }

  /** The tail readers always (SSE on this replica); the groups only where this replica runs workers. */
  start (opts: { groups: boolean }): void {
    for (const t of this.tails) t.start()
    if (opts.groups) for (const g of this.groups) g.start()
  }

  async stop (): Promise<void> {
    await Promise.all([...this.tails, ...this.groups].map(async r => await r.stop()))
  }
}
