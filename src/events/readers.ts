/**
 * The two ways to read the event stream, each a loop that runs until `stop()`:
 * - `GroupReader`: one consumer of a named consumer group. An entry is acknowledged only after its handler
 *   finished, so a crash re-delivers it; entries a dead replica held for CLAIM_IDLE_MS are claimed here. After a
 *   failed read or handler, the consumer first takes its own unacknowledged entries again (a read that timed out
 *   on the client may still have handed entries to it on Redis), so a Redis hiccup costs a retry, not 30 s.
 *   Handlers must be safe to run twice (deliveries and copy jobs have ids derived from the event).
 * - `TailReader`: every entry after the last one seen, on every replica, resuming from that entry after a
 *   reconnect, so a Redis blip skips nothing.
 */
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { TaskEvent } from '../domain/task.ts'
import type { RedisClient } from '../infra/redis.ts'
import type { EventStream, StreamEntry } from '../store/event-stream.ts'

export const CLAIM_IDLE_MS = 30_000
const BLOCK_MS = 500
const RETRY_MS = 500
const STOP_WAIT_MS = 2000

export type EventHandler = (event: TaskEvent) => Promise<void> | void

abstract class Loop {
  private running = false
  private done?: Promise<void>
  protected readonly log: Logger

  constructor (readonly name: string, protected readonly stream: EventStream, protected readonly reader: RedisClient,
    logger: Logger) {
    this.log = logger.child({ component: `events:${name}` })
  }

  start (): void {
    if (this.running) return
    this.running = true
    this.done = this.loop()
  }

  /**
   * Ends the loop; a blocking read is cut short by disconnecting the reader (it is this reader's own). Bounded: a
   * read queued while the connection was reconnecting is not always settled by disconnect() (ioredis leaves the
   * offline queue alone in that state), and shutdown must never wait on it.
   */
  async stop (): Promise<void> {
    this.running = false
    this.reader.disconnect()
    let timer: NodeJS.Timeout | undefined
    const bound = new Promise<void>(resolve => { timer = setTimeout(resolve, STOP_WAIT_MS) })
    await Promise.race([this.done, bound])
    clearTimeout(timer)
  }

  protected abstract step (): Promise<void>

  private async loop (): Promise<void> {
    while (this.running) {
      try {
        await this.step()
      } catch (err) {
        if (!this.running) break
        this.log.warn({ err: (err as Error).message }, 'event stream read failed; retrying')
        await new Promise(resolve => setTimeout(resolve, RETRY_MS))
      }
    }
  }
}

export class GroupReader extends Loop {
  private readonly consumer = `c-${randomBytes(6).toString('hex')}`
  private lastClaim = 0
  /** True until a pass over this consumer's own pending entries ('0') came back empty. */
  private ownPending = true

  /**
   * `concurrency`: entries of one read handled at once (each acknowledged after its own handler), for a handler that
   * waits on the network (the webhooks' inline first attempts); 1 handles them one after the other.
   */
  constructor (name: string, stream: EventStream, reader: RedisClient, logger: Logger,
    private readonly handle: EventHandler, private readonly clock: () => number = Date.now,
    private readonly concurrency = 1) {
    super(name, stream, reader, logger)
  }

  /** Makes the group if missing; every replica does this at start, before it writes an event. */
  async ensureGroup (): Promise<void> {
    await this.stream.ensureGroup(this.name)
  }

  protected async step (): Promise<void> {
    if (this.clock() - this.lastClaim > CLAIM_IDLE_MS / 3) {
      this.lastClaim = this.clock()
      await this.run(await this.stream.claim(this.name, this.consumer, CLAIM_IDLE_MS))
    }
    const from = this.ownPending ? '0' : '>'
    this.ownPending = true // stays set if the read or a handler throws
    const entries = await this.stream.read(this.reader, this.name, this.consumer, BLOCK_MS, from)
    await this.run(entries)
    this.ownPending = from === '0' && entries.length > 0
  }

  /**
   * Handles entries `concurrency` at a time, each acknowledged after its own handler. After a failure no new entry is
   * started, and the ones under way finish before it is thrown: none is still running when the loop reads again.
   */
  private async run (entries: StreamEntry[]): Promise<void> {
    let next = 0
    let failed: { err: unknown } | undefined
    const worker = async () => {
      while (next < entries.length && failed === undefined) {
        const { entryId, event } = entries[next++]
        try {
          if (event !== null) await this.handle(event)
          await this.stream.ack(this.name, entryId)
        } catch (err) {
          failed ??= { err }
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(this.concurrency, entries.length) }, worker))
    if (failed !== undefined) throw failed.err
  }
}

export class TailReader extends Loop {
  private after?: string

  constructor (name: string, stream: EventStream, reader: RedisClient, logger: Logger,
    private readonly handle: EventHandler) {
    super(name, stream, reader, logger)
  }

  protected async step (): Promise<void> {
    this.after ??= await this.stream.lastId()
    for (const { entryId, event } of await this.stream.tail(this.reader, this.after, BLOCK_MS)) {
      this.after = entryId
      if (event !== null) await this.handle(event)
    }
  }
}
