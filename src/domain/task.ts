/** Task states and the rules for moving between them. Pure. */
import type { VideoKind } from './kinds.ts'

export const TASK_STATUSES = ['queued', 'submitted', 'processing', 'succeeded', 'failed', 'canceled'] as const
export type TaskStatus = typeof TASK_STATUSES[number]

const RANK: Record<TaskStatus, number> = {
  queued: 0, submitted: 1, processing: 2, succeeded: 3, failed: 3, canceled: 3
}

export const isTerminal = (s: TaskStatus): boolean => RANK[s] === 3

/**
 * Forward only; `canceled` only from `queued`; nothing leaves a terminal state. The one exception is upstream's
 * own success after a deadline failure (`lateSuccess`, src/domain/upstream-state.ts): the result is paid for.
 */
export function canMove (from: TaskStatus, to: TaskStatus): boolean {
  if (to === 'canceled') return from === 'queued'
  return RANK[to] > RANK[from]
}

/** Kling spells success `succeed`; ours is `succeeded`. */
export function fromKling (status: 'submitted' | 'processing' | 'succeed' | 'failed'): TaskStatus {
  return status === 'succeed' ? 'succeeded' : status
}

export interface UpstreamView {
  task_id: string
  status: 'submitted' | 'processing' | 'succeed' | 'failed'
  status_msg: string | null
}
export interface ResultVideo {
  id: string
  url: string
  duration: string | null
  upstream_url: string
  upstream_expires_at: string | null
  /** Set when the copy gave up for good (the upstream URL expired first): `video.copy_failed` says so too. */
  copy_error?: TaskError | null
}
export interface TaskError { code: string, message: string }

/**
 * Why a task is held for an operator: a create may have made a paid upstream task that the gateway cannot confirm,
 * so it neither fails the task nor sends it again (docs/API.md, "The task object"). `since` in Unix ms.
 */
export interface TaskAttention { code: string, message: string, since: number }

/** A task as stored: the public view plus what only the gateway needs. */
export interface TaskRecord {
  id: string
  caller: string
  /** Which Kling endpoint makes it: the create schema it was checked by, and the upstream path it goes to. */
  kind: VideoKind
  status: TaskStatus
  createdAt: number
  updatedAt: number
  sequence: number
  reference: string | null
  metadata: Record<string, unknown> | null
  request: Record<string, unknown>
  upstream: UpstreamView | null
  result: { videos: ResultVideo[] } | null
  error: TaskError | null
  externalTaskId: string
  webhookUrl: string | null
  /** Set just before a create is sent upstream; an attempt that finds it set must ask upstream before sending again. */
  submitSentAt: number | null
  /** When the result videos were copied into the gateway's blob store. */
  storedAt: number | null
  /** The copies were deleted after VIDEO_RETENTION_DAYS. */
  storedExpired: boolean
  /** Its create answered 503 to a caller without an Idempotency-Key: it must never go upstream. */
  withdrawn: boolean
  /** Held for an operator, or null; any status change clears it. */
  attention: TaskAttention | null
}

/** The task as callers see it (docs/API.md, "The task object"). */
export interface TaskView {
  id: string
  kind: VideoKind
  status: TaskStatus
  created_at: string
  updated_at: string
  reference: string | null
  metadata: Record<string, unknown> | null
  request: Record<string, unknown>
  upstream: UpstreamView | null
  result: { videos: ResultVideo[] } | null
  error: TaskError | null
  attention: { code: string, message: string, since: string } | null
  sequence: number
}

export function toView (t: TaskRecord): TaskView {
  return {
    id: t.id,
    kind: t.kind,
    status: t.status,
    created_at: new Date(t.createdAt).toISOString(),
    updated_at: new Date(t.updatedAt).toISOString(),
    reference: t.reference,
    metadata: t.metadata,
    request: t.request,
    upstream: t.upstream,
    result: t.result,
    error: t.error,
    attention: t.attention === null ? null : { ...t.attention, since: new Date(t.attention.since).toISOString() },
    sequence: t.sequence
  }
}

/**
 * One per state change, plus `video.stored` when the result has been copied into the gateway, or
 * `video.copy_failed` when it never can be (the upstream URL expired before the copy succeeded).
 */
export type EventType = `video.${TaskStatus}` | 'video.stored' | 'video.copy_failed'

/**
 * Every event type, in the order a task can have them: the one list that webhook subscriptions, the OpenAPI
 * `webhooks` and the docs derive from.
 */
export const EVENT_TYPES: readonly EventType[] = [
  ...TASK_STATUSES.map(s => `video.${s}` as const), 'video.stored', 'video.copy_failed'
]

/** Whether the copy of a succeeded task's result gave up for good (some video has a `copy_error`). */
export const copyFailed = (t: Pick<TaskRecord, 'result'>): boolean =>
  t.result?.videos.some(v => v.copy_error !== undefined && v.copy_error !== null) ?? false

/**
 * Whether a task will have no more events: it is terminal, and a success has its result copied too
 * (`video.stored` comes last), or given up (`video.copy_failed`). SSE streams end there, and answer 204 to a
 * reconnect after it.
 */
export const isSettled = (t: Pick<TaskRecord, 'status' | 'storedAt' | 'result'>): boolean =>
  isTerminal(t.status) && (t.status !== 'succeeded' || t.storedAt !== null || copyFailed(t))

/** Whether this is the last event its task will ever have (see isSettled). */
export const isLastEvent = (e: Pick<TaskEvent, 'type' | 'data'>): boolean =>
  e.type === 'video.stored' || e.type === 'video.copy_failed' ||
  (isTerminal(e.data.status) && e.data.status !== 'succeeded')

/** One entry of a task's event log; the same object feeds SSE, webhooks and the Redis Stream. */
export interface TaskEvent {
  /** Unique for ever (`evt_…`), also across a Redis rollback that reuses a sequence: webhook-id and SSE `id:`. */
  id: string
  type: EventType
  task_id: string
  caller: string
  sequence: number
  timestamp: string
  data: TaskView
}
