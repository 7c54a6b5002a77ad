/** How an upstream task's state becomes a change of ours. Pure. */
import { canMove, fromKling, type ResultVideo, type TaskRecord, type TaskStatus } from './task.ts'

/** Kling deletes results after 30 days. */
export const UPSTREAM_RETENTION_MS = 30 * 24 * 3600_000

export interface UpstreamSnapshot {
  taskId: string
  status: 'submitted' | 'processing' | 'succeed' | 'failed'
  statusMsg: string | null
  videos: Array<{ id: string, url: string, duration: string | null }>
  updatedAt: number | null
}

export interface StateChange {
  to: TaskStatus
  upstream: NonNullable<TaskRecord['upstream']>
  result?: TaskRecord['result']
  error?: TaskRecord['error']
}

/**
 * When a result URL says it stops working, from the query parameters signed CDN URLs carry: `x-expires`, `expires`
 * or `x-oss-expires` (Unix seconds), or `X-Amz-Date` + `X-Amz-Expires` (case-insensitive); null when it says nothing.
 */
export function urlExpiresAt (url: string): number | null {
  if (!URL.canParse(url)) return null
  const q = new Map([...new URL(url).searchParams].map(([k, v]) => [k.toLowerCase(), v]))
  const seconds = q.get('x-expires') ?? q.get('expires') ?? q.get('x-oss-expires')
  if (seconds !== undefined && /^\d{9,11}$/.test(seconds)) return Number(seconds) * 1000
  const date = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(q.get('x-amz-date') ?? '')
  const ttl = q.get('x-amz-expires')
  if (date === null || ttl === undefined || !/^\d{1,7}$/.test(ttl)) return null
  const [, y, mo, d, h, mi, s] = date.map(Number)
  return Date.UTC(y, mo - 1, d, h, mi, s) + Number(ttl) * 1000
}

/** Where callers fetch a result video: the gateway's own copy, which outlives the upstream URL. */
export function contentUrl (base: string, taskId: string, index: number): string {
  return `${base}/v1/videos/${taskId}/content${index > 0 ? `?index=${index}` : ''}`
}

/**
 * The one exception to "nothing leaves a terminal state": a task the gateway failed for its deadline
 * (UPSTREAM_DEADLINE) that upstream then reports done. Upstream has made, and been paid for, the video: the task
 * becomes `succeeded` with its result (its error cleared), and the result is copied as for any success. Only
 * upstream's word moves it; a failure reported after the deadline changes nothing.
 */
export function lateSuccess (task: Pick<TaskRecord, 'status' | 'error'>, up: Pick<UpstreamSnapshot, 'status'>):
boolean {
  return task.status === 'failed' && task.error?.code === 'UPSTREAM_DEADLINE' && up.status === 'succeed'
}

/**
 * The change that brings `task` to what upstream says, or null when that would not move it forward (or, after a
 * deadline failure, to a success: `lateSuccess`). `base` is the gateway's public base URL, for result URLs.
 */
export function changeFromUpstream (
  task: Pick<TaskRecord, 'id' | 'status' | 'error'>,
  up: UpstreamSnapshot,
  now: number,
  base = ''
): StateChange | null {
  const to = fromKling(up.status)
  const late = lateSuccess(task, up)
  if (!canMove(task.status, to) && !late) return null
  const change: StateChange = { to, upstream: { task_id: up.taskId, status: up.status, status_msg: up.statusMsg } }
  if (late) change.error = null
  if (to === 'succeeded') {
    const retained = (up.updatedAt ?? now) + UPSTREAM_RETENTION_MS
    const videos: ResultVideo[] = up.videos.map((v, i) => ({
      id: v.id,
      url: contentUrl(base, task.id, i),
      duration: v.duration,
      upstream_url: v.url,
      // A URL signed for less than Kling keeps the file stops working first: the copy must be done by then.
      upstream_expires_at: new Date(Math.min(retained, urlExpiresAt(v.url) ?? Infinity)).toISOString()
    }))
    change.result = { videos }
  }
  if (to === 'failed') change.error = { code: 'UPSTREAM_FAILED', message: up.statusMsg ?? 'the upstream task failed' }
  return change
}

/**
 * A confirmed (queried) message for the state the task is already in: an unconfirmed callback may have moved the
 * task without its text (src/routes/callbacks.ts), and the query that follows brings upstream's own. Bookkeeping,
 * no event (the status did not change); null when there is nothing to update.
 */
export function confirmedMessage (task: TaskRecord, up: UpstreamSnapshot): StateChange | null {
  const upstream = task.upstream
  if (upstream === null || upstream.task_id !== up.taskId || upstream.status !== up.status) return null
  if (fromKling(up.status) !== task.status || upstream.status_msg === up.statusMsg) return null
  return { to: task.status, upstream: { ...upstream, status_msg: up.statusMsg } }
}
