/**
 * Canceling a task, the service behind `POST /v1/videos/{id}/cancel`: only while it is queued and its submit has
 * not started (`submit_sent_at` guards the race with an in-flight create), and durable before the answer, since
 * a cancel rolled back by a failover would put the task back in the queue, to be paid for.
 */
import { Conflict } from '../domain/errors.ts'
import type { TaskRecord } from '../domain/task.ts'
import type { TaskStore } from '../store/tasks.ts'
import { utcDay } from './limits.ts'

export async function cancelTask (store: TaskStore, task: TaskRecord): Promise<TaskRecord> {
  const outcome = await store.transition(task.id, t => t.status === 'queued' ? { to: 'canceled' } : null,
    { requireEmpty: 'submit_sent_at', current: task })
  if (!outcome.applied) {
    const now = outcome.task?.status === 'queued' ? 'being submitted upstream' : (outcome.task?.status ?? 'gone')
    throw new Conflict('NOT_CANCELABLE', `the task is ${now}; only a queued task can be canceled`)
  }
  await store.durable()
  await store.dropParked(task.id)
  // Never sent upstream, so never paid for: its units go back (docs/API.md, "Per-caller limits"). Best effort: the
  // cancel has happened, and a refund lost to a Redis blip only leaves the budget stricter than it need be.
  await store.refundUnits(outcome.task, utcDay(outcome.task.createdAt)).catch(() => 0)
  return outcome.task
}
