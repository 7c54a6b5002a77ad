import { changeFromUpstream } from '../domain/upstream-state.ts'
import type { TaskStore, TransitionOutcome } from '../store/tasks.ts'
import type { UpstreamTask } from '../upstream/client.ts'

/**
 * Moves a task to what upstream says it is, forward only, through the one atomic transition; remembers the
 * upstream id, and lets go of the parked images once upstream has the task. Safe to call with stale or
 * duplicate answers: they change nothing.
 */
export async function applyUpstream (
  store: TaskStore,
  taskId: string,
  up: UpstreamTask,
  now: number,
  base: string
): Promise<TransitionOutcome> {
  const snapshot = {
    taskId: up.taskId, status: up.status, statusMsg: up.statusMsg, videos: up.videos, updatedAt: up.updatedAt
  }
  const outcome = await store.transition(taskId, t => changeFromUpstream(t, snapshot, now, base))
  await store.dropParked(taskId)
  return outcome
}
