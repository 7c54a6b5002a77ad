/**
 * An operator's way out of a hold (`POST /v1/videos/{id}/resolve`, admin keys only): a held task is one whose create
 * may have made a paid upstream task the gateway cannot confirm (src/jobs/hold.ts). The operator, having looked in
 * upstream's dashboard or asked support, either names the upstream task (adopted after upstream confirms it),
 * fails the task, or has it sent again (upstream refuses a duplicate external_task_id, if it does have one).
 */
import type { Logger } from 'pino'
import { Conflict, GatewayError, Unavailable } from '../domain/errors.ts'
import type { TaskRecord } from '../domain/task.ts'
import { changeFromUpstream } from '../domain/upstream-state.ts'
import type { TaskStore } from '../store/tasks.ts'
import type { SubmitJobs } from '../jobs/submit.ts'
import type { UpstreamAdapter } from '../upstream/adapter.ts'
import { UpstreamError, type UpstreamTask } from '../upstream/client.ts'

export type Resolution =
  | { action: 'adopt', upstreamTaskId: string }
  | { action: 'fail', message?: string }
  | { action: 'resend' }

export interface ResolveDeps {
  store: TaskStore
  upstream: UpstreamAdapter
  jobs: Pick<SubmitJobs, 'submit'>
  clock: () => number
  /** For result URLs, when the adopted task has already finished. */
  publicBaseUrl: string
  logger: Logger
}

const notHeld = (task: TaskRecord | null) => new Conflict('NOT_HELD',
  `the task is ${task?.status ?? 'gone'} and not held for an operator; only a held task can be resolved`)

/** Resolves a held task as the operator said; the task as it is afterwards. */
export async function resolveHeld (deps: ResolveDeps, task: TaskRecord, how: Resolution, operator: string):
Promise<TaskRecord> {
  if (task.attention === null) throw notHeld(task)
  const { store, logger } = deps
  const log = (msg: string, extra: Record<string, unknown> = {}) =>
    logger.warn({ taskId: task.id, operator, attention: task.attention?.code, ...extra }, msg)
  if (how.action === 'adopt') {
    const up = await confirmed(deps, task, how.upstreamTaskId)
    const outcome = await store.transition(task.id, t => t.attention === null
      ? null
      : changeFromUpstream(t, up, deps.clock(), deps.publicBaseUrl), { current: task })
    if (!outcome.applied) throw notHeld(outcome.task)
    await store.dropParked(task.id)
    log('held task resolved: the upstream task is adopted', { upstreamTaskId: up.taskId })
    return outcome.task
  }
  if (how.action === 'fail') {
    const message = how.message ?? 'failed by an operator: the upstream task could not be confirmed'
    const outcome = await store.transition(task.id, t => t.status === 'queued' && t.attention !== null
      ? { to: 'failed', error: { code: 'FAILED_BY_OPERATOR', message } }
      : null, { current: task })
    if (!outcome.applied) throw notHeld(outcome.task)
    await store.dropParked(task.id)
    log('held task resolved: failed')
    return outcome.task
  }
  // Sent again as if never sent: the submit job claims it afresh (and upstream refuses a duplicate external id).
  const outcome = await store.transition(task.id, t => t.status === 'queued' && t.attention !== null
    ? { to: 'queued', attention: null, submitSentAt: null }
    : null, { current: task, event: false })
  if (!outcome.applied) throw notHeld(outcome.task)
  await store.durable()
  await deps.jobs.submit(task.id)
  log('held task resolved: sent again')
  return outcome.task
}

/** The upstream task the operator named, as upstream reports it; refused when upstream has none, or another's. */
async function confirmed (deps: ResolveDeps, task: TaskRecord, id: string): Promise<UpstreamTask> {
  let up: UpstreamTask | null
  try {
    up = await deps.upstream.query(task.kind, id)
  } catch (err) {
    if (!(err instanceof UpstreamError)) throw err
    throw new Unavailable(`upstream could not be asked for that task (${err.code}); retry later`, 5)
  }
  if (up === null) {
    throw new GatewayError('UPSTREAM_TASK_UNKNOWN', 422, `upstream has no ${task.kind} task ${id}`)
  }
  if (up.externalTaskId !== null && up.externalTaskId !== task.externalTaskId) {
    throw new GatewayError('UPSTREAM_TASK_UNKNOWN', 422,
      `upstream task ${id} was made for another request (its external_task_id is not this task's)`)
  }
  return up
}
