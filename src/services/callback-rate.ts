/**
 * The callbacks each task got in its current minute, counted on this replica in memory (docs/API.md, "The upstream
 * callback": more than 120 in a minute is 429). It guards a replica against a leaked token used to flood it, which
 * a count per replica does as well as one in Redis, at no Redis command per callback (most callbacks are repeats
 * that need one read and nothing else). With N replicas behind a balancer a task can get N × the limit in all.
 */
export const MAX_CALLBACKS_PER_MINUTE = 120
const WINDOW_MS = 60_000
/** Tasks tracked at once; past it, ended windows are dropped, and if none has ended, all start again. */
const MAX_TASKS = 100_000

export class CallbackRate {
  /** A task's window starts with its first callback: refreshing it on every callback would never let it end. */
  private readonly windows = new Map<string, { start: number, count: number }>()

  constructor (private readonly limit = MAX_CALLBACKS_PER_MINUTE, private readonly maxTasks = MAX_TASKS) {}

  /** Counts one callback for `taskId` at `now` (ms); true when that is more than the limit in its minute. */
  over (taskId: string, now: number): boolean {
    let w = this.windows.get(taskId)
    if (w === undefined || now - w.start >= WINDOW_MS) {
      if (w === undefined && this.windows.size >= this.maxTasks) this.sweep(now)
      w = { start: now, count: 0 }
      this.windows.set(taskId, w)
    }
    w.count++
    return w.count > this.limit
  }

  get tracked (): number {
    return this.windows.size
  }

  private sweep (now: number): void {
    for (const [id, w] of this.windows) if (now - w.start >= WINDOW_MS) this.windows.delete(id)
    if (this.windows.size >= this.maxTasks) this.windows.clear()
  }
}
