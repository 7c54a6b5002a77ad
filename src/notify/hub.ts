/**
 * Live events on every replica: one Redis subscriber per process, fanned out in memory to whoever listens for a
 * task (SSE streams). The transition script PUBLISHes each event as it appends it, so a callback taken by
 * replica B reaches an SSE client on replica A. Pub/sub can drop messages while a connection is down; listeners
 * are told to resync from the event list when the subscriber reconnects.
 */
import type { Logger } from 'pino'
import type { TaskEvent } from '../domain/task.ts'
import type { RedisClient } from '../infra/redis.ts'

export interface HubListener { event: (e: TaskEvent) => void, resync: () => void }

export class EventHub {
  private readonly listeners = new Map<string, Set<HubListener>>()
  private readonly log: Logger
  private connectedOnce = false

  constructor (private readonly sub: RedisClient, private readonly channel: string, logger: Logger) {
    this.log = logger.child({ component: 'hub' })
    sub.on('error', (err: Error) => this.log.warn({ err: err.message }, 'subscriber connection error'))
    sub.on('message', (_channel: string, message: string) => this.dispatch(message))
    sub.on('ready', () => {
      if (this.connectedOnce) for (const set of this.listeners.values()) for (const l of set) l.resync()
      this.connectedOnce = true
    })
  }

  async start (): Promise<void> {
    await this.sub.subscribe(this.channel)
  }

  /** Calls `listener` for each live event of `taskId`; returns the function that stops it. */
  listen (taskId: string, listener: HubListener): () => void {
    let set = this.listeners.get(taskId)
    if (set === undefined) this.listeners.set(taskId, set = new Set())
    set.add(listener)
    return () => {
      set.delete(listener)
      if (set.size === 0) this.listeners.delete(taskId)
    }
  }

  get listening (): number {
    let n = 0
    for (const set of this.listeners.values()) n += set.size
    return n
  }

  async close (): Promise<void> {
    this.listeners.clear()
    await this.sub.quit().catch(() => this.sub.disconnect())
  }

  private dispatch (message: string): void {
    let event: TaskEvent
    try {
      event = JSON.parse(message) as TaskEvent
    } catch {
      return
    }
    const set = this.listeners.get(event.task_id)
    if (set !== undefined) for (const l of set) l.event(event)
  }
}
