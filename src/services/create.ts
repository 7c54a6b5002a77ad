/**
 * Creating a task, the service behind `POST /v1/videos` (the route only does HTTP). Its promise: a 202 is a
 * task stored durably, queued for exactly one upstream create; a retry with the same Idempotency-Key returns
 * the same task whatever happened to the first try (a timeout that ran late, a 503 from the durability rule).
 *
 * Order: park the images (under a fresh task id) → one create script (task, event, indexes, reference and the
 * key's record together, safe to run late or twice) → queue the submit job → wait until durable → 202. A create
 * without a key that fails after its script may have run is withdrawn (canceled as NOT_ACCEPTED before it can
 * go upstream), so the caller's 503 never hides a task that will still be paid for.
 */
import { randomUUID } from 'node:crypto'
import type { Logger } from 'pino'
import type { CheckedCreate } from '../domain/create.ts'
import { Conflict, GatewayError, Unavailable } from '../domain/errors.ts'
import type { TaskRecord } from '../domain/task.ts'
import type { TaskStore } from '../store/tasks.ts'
import type { SubmitJobs } from '../jobs/submit.ts'
import type { CallersConfig } from '../config/callers.ts'
import { createLimits, createRefusal, utcDay } from './limits.ts'

export interface CreateDeps {
  store: TaskStore
  jobs: Pick<SubmitJobs, 'submit'>
  clock: () => number
  ids: () => string
  parkedMaxBytes: number
  logger: Logger
  /** Per-caller limits checked and charged by the create script (max_active_tasks, daily_units); none without. */
  callers?: CallersConfig
  /** Told the units a new task was charged (the per-caller units metric). */
  onCharged?: (caller: string, units: number) => void
}

export interface CreateInput {
  caller: string
  checked: CheckedCreate
  reference: string | null
  metadata: Record<string, unknown> | null
  webhookUrl: string | null
  idempotencyKey?: string
  /** The task id a streamed body parked its images under (src/services/intake.ts): the task takes that id. */
  parkedId?: string
}

export interface CreateResult { task: TaskRecord, replayed: boolean }

const reused = () =>
  new GatewayError('IDEMPOTENCY_KEY_REUSED', 422, 'this Idempotency-Key was used with a different request body')

export async function createTask (deps: CreateDeps, input: CreateInput): Promise<CreateResult> {
  const { store } = deps
  const { fingerprint, images, request } = input.checked
  const key = input.idempotencyKey

  if (key !== undefined) {
    // A replay needs no parking: answer it from the key's record (the create script checks again anyway).
    const earlier = await store.idempotentTask(input.caller, key)
    if (earlier !== null && earlier.fingerprint !== fingerprint) throw reused()
    const task = earlier === null ? null : await store.get(earlier.taskId)
    if (task !== null) return await settle(deps, task, { replayed: true, withdrawOnFailure: false })
  }

  const id = input.parkedId ?? deps.ids()
  const parked = input.parkedId === undefined
    ? await store.park(id, images, deps.parkedMaxBytes)
    : await store.settleParked(id, images, input.checked.streamedBytes + sum(images), deps.parkedMaxBytes)
  if (!parked) {
    throw new Unavailable('too many images are waiting for upstream capacity; retry later', 30)
  }
  let outcome: Awaited<ReturnType<TaskStore['create']>>
  const now = deps.clock()
  const limits = deps.callers === undefined ? undefined : createLimits(deps.callers, input.caller, request, now)
  try {
    outcome = await store.create({
      id,
      caller: input.caller,
      kind: input.checked.kind,
      createdAt: now,
      reference: input.reference,
      metadata: input.metadata,
      request,
      externalTaskId: randomUUID(),
      webhookUrl: input.webhookUrl
    }, key === undefined ? undefined : { key, fingerprint }, limits)
  } catch (err) {
    // The script may still run after this (a timeout is not a "no"): its images are freed unless it did, and a
    // task it made without a key is withdrawn. Both are queued behind it on the same connection.
    await store.releaseParked(id).catch(() => {})
    if (key === undefined) await withdraw(deps, id)
    throw err
  }
  if (outcome.outcome === 'mismatch') throw reused()
  if (outcome.outcome === 'limit') throw createRefusal(deps.callers as CallersConfig, input.caller, outcome.limit, now)
  if (outcome.outcome === 'created' && limits !== undefined) deps.onCharged?.(input.caller, limits.units)
  if (outcome.outcome === 'reference') {
    throw new Conflict('REFERENCE_TAKEN', `reference is already used by task ${outcome.taskId}`)
  }
  return await settle(deps, outcome.task, {
    replayed: outcome.outcome === 'existing',
    withdrawOnFailure: key === undefined
  })
}

const sum = (images: Map<string, Buffer>) => [...images.values()].reduce((n, data) => n + data.length, 0)

/** Queues the task's submit job (again: a no-op while it exists) and waits until what was written is durable. */
async function settle (deps: CreateDeps, task: TaskRecord, opts: { replayed: boolean, withdrawOnFailure: boolean }):
Promise<CreateResult> {
  try {
    if (task.status === 'queued') await deps.jobs.submit(task.id, opts.replayed ? undefined : task)
    await deps.store.durable()
  } catch (err) {
    if (opts.withdrawOnFailure) await withdraw(deps, task.id)
    throw err
  }
  return { task, replayed: opts.replayed }
}

/**
 * Withdraws a task whose create answered 503 to a caller who sent no Idempotency-Key (that caller cannot find it
 * again, and would pay twice by retrying): marked first (a write, so it lands after a create script still on
 * its way), then canceled here if Redis answers, or by the submit job before it could send. Best effort.
 */
async function withdraw (deps: CreateDeps, id: string): Promise<void> {
  try {
    if (!await deps.store.withdraw(id)) return
    await cancelWithdrawn(deps.store, id)
    deps.logger.warn({ taskId: id }, 'create failed after its task was stored: withdrawn')
  } catch {
    // Redis is unreachable: the submit job or reconciliation finds the mark, if the task was stored at all.
  }
}

/** Cancels a withdrawn task that has not gone upstream (NOT_ACCEPTED) and frees its images. */
export async function cancelWithdrawn (store: TaskStore, id: string): Promise<boolean> {
  const outcome = await store.transition(id, t => t.status === 'queued' && t.withdrawn
    ? {
        to: 'canceled',
        error: {
          code: 'NOT_ACCEPTED',
          message: 'the create answered 503 before the task was durable; nothing was sent upstream'
        }
      }
    : null, { requireEmpty: 'submit_sent_at' })
  if (outcome.applied) {
    await store.dropParked(id)
    // Never sent upstream, so never paid for: its units go back (docs/API.md, "Per-caller limits"). Best effort: the
    // cancel has happened, and a refund lost to a Redis blip only leaves the budget stricter than it need be.
    await store.refundUnits(outcome.task, utcDay(outcome.task.createdAt)).catch(() => 0)
  }
  return outcome.applied
}
