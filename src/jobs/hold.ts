/**
 * Holding a task for an operator (docs/API.md, "The task object", `attention`): a create may have made a paid
 * upstream task that the gateway cannot confirm, so failing it could throw away a video being paid for and sending
 * it again could pay twice. The task keeps its status (`queued`) and its `submit_sent_at` (so it cannot be
 * canceled), gets `attention`, and is filed under the attention indexes (the admin filter, the
 * `kg_tasks_needing_attention` gauge). Reconciliation keeps looking it up; `POST /v1/videos/{id}/resolve` ends it.
 */
import type { Logger } from 'pino'
import type { TaskStore } from '../store/tasks.ts'

/** Why a task is held: see ERROR_CODES (src/domain/errors.ts). */
export type HoldCode = 'CREATE_UNCONFIRMED' | 'DEADLINE_UNCONFIRMED'

/** Holds a queued task whose create may be upstream; logs one error line per task (only the first hold logs). */
export async function holdTask (store: TaskStore, log: Logger, taskId: string, code: HoldCode, message: string,
  now: number): Promise<'held'> {
  const outcome = await store.transition(taskId, t => t.status === 'queued' && t.attention === null
    ? { to: 'queued', attention: { code, message, since: now } }
    : null, { event: false })
  if (outcome.applied) {
    log.error({ taskId, code, message }, 'task held for an operator: a create may have made a paid upstream task ' +
      'that cannot be confirmed, so it is neither failed nor sent again (POST /v1/videos/{id}/resolve)')
  }
  return 'held'
}
