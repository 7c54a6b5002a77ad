/**
 * Live events on this replica, fanned out in memory to whoever listens for a task (SSE streams). It is fed by
 * the `live` reader of the event stream (src/events), which every replica runs, so a callback taken by replica B
 * reaches an SSE client on replica A; that reader resumes after the last entry it saw when Redis comes back, so
 * a blip skips nothing. After such a resume the hub's `resumes` count moves on, and each stream reads its task's
 * log once at its next heartbeat: the one moment a stream has a reason to look at Redis besides a gap it saw.
 */
import type { TaskEvent } from '../domain/task.ts'

export type HubListener = (e: TaskEvent) => void

export class EventHub {
  private readonly listeners = new Map<string, Set<HubListener>>()
  private resumeCount = 0

  /** How many times the live reader came back after a failed read; a stream that saw a lower count catches up. */
  get resumes (): number { return this.resumeCount }

  /** The `live` reader read again after failing (a Redis blip). */
  resumed (): void { this.resumeCount++ }

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

  /** The `live` reader's handler. */
  dispatch (event: TaskEvent): void {
    const set = this.listeners.get(event.task_id)
    if (set !== undefined) for (const l of set) l(event)
  }

  close (): void {
    this.listeners.clear()
  }
}
