import { changeFromUpstream, confirmedMessage } from '../domain/upstream-state.ts'
import type { TaskRecord } from '../domain/task.ts'
import type { TaskStore, TransitionOutcome } from '../store/tasks.ts'
import type { UpstreamTask } from '../upstream/client.ts'

/**
 * Moves a task to what upstream says it is, forward only, through the one atomic transition; remembers the
 * upstream id, and lets go of the parked images once upstream has the task. Safe to call with stale or
 * duplicate answers: they change nothing. `current`, the record the caller has just read, saves a read (the script
 * still checks it is current; a stale one costs a retry).
 */
export async function applyUpstream (
  store: TaskStore,
  taskId: string,
  up: UpstreamTask,
  now: number,
  base: string,
  current?: TaskRecord
): Promise<TransitionOutcome> {
  const snapshot = {
    taskId: up.taskId, status: up.status, statusMsg: up.statusMsg, videos: up.videos, updatedAt: up.updatedAt
  }
  const outcome = await store.transition(taskId, t => changeFromUpstream(t, snapshot, now, base), { current })
  // Only queried answers come here, so their message is upstream's own: it is taken even when the status is not
  // new. Not reported as applied: callers decide on status moves (a deadline is not put off by a new message).
  if (!outcome.applied && outcome.task !== null) {
    await store.transition(taskId, t => confirmedMessage(t, snapshot), { current: outcome.task })
  }
  await store.dropParked(taskId)
  return outcome
}
