/**
 * The two ways to read the event stream, each a loop that runs until `stop()`:
 * - `GroupReader`: one consumer of a named consumer group. An entry is acknowledged only after its handler
 *   finished, so a crash re-delivers it; entries a dead replica held for CLAIM_IDLE_MS are claimed here. After a
 *   failed read or handler, the consumer first takes its own unacknowledged entries again (a read that timed out
 *   on the client may still have handed entries to it on Redis), so a Redis hiccup costs a retry, not 30 s.
 *   Handlers must be safe to run twice (deliveries and copy jobs have ids derived from the event); a batch's
 *   entries are acknowledged together once handled.
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
  /** Set by a failed step, cleared by the subclass when a step has gone through again. */
  protected failed = false
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

  /** After the last step: what a reader still has in hand (bounded by stop()'s wait). */
  protected async finish (): Promise<void> {}

  private async loop (): Promise<void> {
    await this.steps()
    await this.finish().catch(() => {})
  }

  private async steps (): Promise<void> {
    while (this.running) {
      try {
        await this.step()
      } catch (err) {
        if (!this.running) break
        this.failed = true
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

  /** Entries being handled (pipelined mode), and those handled but not acknowledged yet. */
  private readonly inFlight = new Map<string, Promise<void>>()
  private handled: string[] = []
  private ackScheduled = false
  private failure: { err: unknown } | null = null

  /**
   * `concurrency`: 1 handles each read's entries one after the other. More is for a handler that waits on the
   * network (the webhooks' inline first attempts): up to that many entries are handled at once, and the reader
   * reads on while they run, so a slow entry holds up only itself, not the entries read with it.
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
    if (this.concurrency > 1) return await this.pipelined()
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
   * The one-at-a-time mode: handles the entries in order and acknowledges the handled ones together, in one XACK at
   * the end (one per entry was a command and a round trip per event and group). Also when a handler throws: what
   * was handled before is acknowledged, the rest is read again from this consumer's pending entries. A crash before
   * the XACK hands the whole batch out again, which handlers are written for.
   */
  private async run (entries: StreamEntry[]): Promise<void> {
    const handled: string[] = []
    try {
      for (const { entryId, event } of entries) {
        if (event !== null) await this.handle(event)
        handled.push(entryId)
      }
    } finally {
      await this.stream.ack(this.name, handled)
    }
  }

  /**
   * One step of the pipelined mode: reads as many new entries as there is room for and starts their handlers
   * without waiting for them (each handled entry is acknowledged as it finishes, see acknowledgeSoon). After a
   * handler failed, everything in flight is let finish, and this consumer's own pending entries ('0') are handled
   * again before it reads new ones, as in the one-at-a-time mode.
   */
  private async pipelined (): Promise<void> {
    await this.flushAcks()
    if (this.failure !== null) {
      const { err } = this.failure
      await this.settle()
      this.failure = null
      this.ownPending = true
      throw err
    }
    if (this.clock() - this.lastClaim > CLAIM_IDLE_MS / 3) {
      this.lastClaim = this.clock()
      for (const entry of await this.stream.claim(this.name, this.consumer, CLAIM_IDLE_MS)) this.begin(entry)
    }
    if (this.ownPending) {
      // Only with nothing in flight: in-flight entries are among this consumer's pending ones too.
      await this.settle()
      const own = await this.stream.read(this.reader, this.name, this.consumer, BLOCK_MS, '0')
      for (const entry of own) this.begin(entry)
      await this.settle()
      this.ownPending = own.length > 0 || this.failure !== null
      return
    }
    const room = this.concurrency - this.inFlight.size
    if (room <= 0) {
      await Promise.race(this.inFlight.values())
      return
    }
    for (const entry of await this.stream.read(this.reader, this.name, this.consumer, BLOCK_MS, '>', room)) {
      this.begin(entry)
    }
  }

  private begin ({ entryId, event }: StreamEntry): void {
    if (this.inFlight.has(entryId)) return
    const run = (async () => { if (event !== null) await this.handle(event) })()
      .then(() => { this.acknowledgeSoon(entryId) }, (err: unknown) => { this.failure ??= { err } })
      .finally(() => { this.inFlight.delete(entryId) })
    this.inFlight.set(entryId, run)
  }

  /**
   * Acknowledges a handled entry on the command connection (the reader's may be blocked in a read), together with
   * the others handled in the same turn of the event loop: one XACK for them all.
   */
  private acknowledgeSoon (entryId: string): void {
    this.handled.push(entryId)
    if (this.ackScheduled) return
    this.ackScheduled = true
    setImmediate(() => {
      this.ackScheduled = false
      // A failed XACK keeps its ids for the next step's (a crash meanwhile hands them out again, which is allowed).
      this.flushAcks().catch(() => {})
    })
  }

  private async settle (): Promise<void> {
    await Promise.all(this.inFlight.values())
    await this.flushAcks()
  }

  private async flushAcks (): Promise<void> {
    if (this.handled.length === 0) return
    const ids = this.handled
    this.handled = []
    try {
      await this.stream.ack(this.name, ids)
    } catch (err) {
      // Not acknowledged: kept for the next step (a crash meanwhile hands them out again, which is allowed).
      this.handled.push(...ids)
      throw err
    }
  }

  protected override async finish (): Promise<void> {
    await this.settle()
  }
}

export class TailReader extends Loop {
  private after?: string

  /** `onResume`: called once a read goes through after failed ones (its readers may want to check their state). */
  constructor (name: string, stream: EventStream, reader: RedisClient, logger: Logger,
    private readonly handle: EventHandler, private readonly onResume: () => void = () => {}) {
    super(name, stream, reader, logger)
  }

  protected async step (): Promise<void> {
    this.after ??= await this.stream.lastId()
    const entries = await this.stream.tail(this.reader, this.after, BLOCK_MS)
    if (this.failed) {
      this.failed = false
      this.onResume()
    }
    for (const { entryId, event } of entries) {
      this.after = entryId
      if (event !== null) await this.handle(event)
    }
  }
}
