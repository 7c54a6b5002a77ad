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

/** Where callers fetch a result video: the gateway's own copy, which outlives the upstream URL. */
export function contentUrl (base: string, taskId: string, index: number): string {
  return `${base}/v1/videos/${taskId}/content${index > 0 ? `?index=${index}` : ''}`
}

/**
 * The change that brings `task` to what upstream says, or null when that would not move it forward.
 * `base` is the gateway's public base URL, for result URLs.
 */
export function changeFromUpstream (
  task: TaskRecord,
  up: UpstreamSnapshot,
  now: number,
  base = ''
): StateChange | null {
  const to = fromKling(up.status)
  if (!canMove(task.status, to)) return null
  const change: StateChange = { to, upstream: { task_id: up.taskId, status: up.status, status_msg: up.statusMsg } }
  if (to === 'succeeded') {
    const expires = new Date((up.updatedAt ?? now) + UPSTREAM_RETENTION_MS).toISOString()
    const videos: ResultVideo[] = up.videos.map((v, i) => ({
      id: v.id,
      url: contentUrl(base, task.id, i),
      duration: v.duration,
      upstream_url: v.url,
      upstream_expires_at: expires
    }))
    change.result = { videos }
  }
  if (to === 'failed') change.error = { code: 'UPSTREAM_FAILED', message: up.statusMsg ?? 'the upstream task failed' }
  return change
}
