/**
 * Examples for the OpenAPI document: what Swagger's "Try it out" sends and what generators show. Each one is
 * checked against its schema in test/openapi.test.ts, so an example that drifts from the schema fails the suite.
 */
import type { EventType, TaskStatus, TaskView, UpstreamView } from '../domain/task.ts'
import type { VideoKind } from '../domain/kinds.ts'

const TASK_ID = '0f8c2a8e-5b7d-4c1e-9a3f-6d2b1e4c7a90'
const CREATED = '2026-11-24T10:15:30.123Z'

/** A valid create: two https images and a prompt (the gateway does not fetch URLs, upstream does). */
export const CREATE_EXAMPLE = {
  image_list: [
    { image: 'https://images.example.com/friends-1.png' },
    { image: 'https://images.example.com/friends-2.png' }
  ],
  prompt: 'two friends wave at the camera, then hug'
}

/** A valid create of each kind. */
export const CREATE_EXAMPLES: Record<VideoKind, Record<string, unknown>> = {
  'multi-image2video': CREATE_EXAMPLE,
  image2video: { image: 'https://images.example.com/harbour.png', prompt: 'the boats rock gently, gulls fly past' },
  text2video: { prompt: 'a paper boat drifts down a rainy street at dusk', aspect_ratio: '16:9' }
}

/** The task that create makes, in `queued`, as `POST /v1/videos` answers it. */
export const TASK_EXAMPLE: TaskView = {
  id: TASK_ID,
  kind: 'multi-image2video',
  status: 'queued',
  created_at: CREATED,
  updated_at: CREATED,
  reference: null,
  metadata: null,
  request: { ...CREATE_EXAMPLE, model_name: 'kling-v1-6', mode: 'std', duration: '5' },
  upstream: null,
  result: null,
  error: null,
  attention: null,
  sequence: 1
}

/** The same task later in its life: what GET, the list, cancel, SSE and each webhook show. */
export function taskExample (status: TaskStatus, stored = false): TaskView {
  const at = (s: number) => new Date(Date.parse(CREATED) + s * 1000).toISOString()
  const steps: Record<TaskStatus, number> = {
    queued: 1, submitted: 2, processing: 3, succeeded: 4, failed: 4, canceled: 2
  }
  const kling: Partial<Record<TaskStatus, UpstreamView['status']>> = {
    submitted: 'submitted', processing: 'processing', succeeded: 'succeed', failed: 'failed'
  }
  const upstreamStatus = kling[status]
  const message = status === 'failed' ? 'Image content violates the policy' : null
  return {
    ...TASK_EXAMPLE,
    status,
    updated_at: at(steps[status] * 30 + (stored ? 5 : 0)),
    sequence: steps[status] + (stored ? 1 : 0),
    upstream: upstreamStatus === undefined
      ? null
      : { task_id: '786543210987654321', status: upstreamStatus, status_msg: message },
    result: status !== 'succeeded'
      ? null
      : {
          videos: [{
            id: 'a1b2c3d4-0000-4c1e-9a3f-6d2b1e4c7a90',
            url: `https://gateway.example.com/v1/videos/${TASK_ID}/content`,
            duration: '5.1',
            upstream_url: 'https://cdn.klingai.example/videos/786543210987654321.mp4',
            upstream_expires_at: '2026-12-24T10:17:30.000Z'
          }]
        },
    error: message === null ? null : { code: 'UPSTREAM_FAILED', message }
  }
}

/** The data of an event of a type: the task as it was when the event was appended. */
export function eventTaskExample (type: EventType) {
  if (type === 'video.stored') return taskExample('succeeded', true)
  if (type === 'video.copy_failed') return copyFailedExample()
  return taskExample(type.slice('video.'.length) as TaskStatus)
}

/** A success whose one video could not be copied before its upstream URL expired. */
function copyFailedExample (): TaskView {
  const task = taskExample('succeeded', true)
  const videos = (task.result?.videos ?? []).map(v => ({
    ...v,
    copy_error: {
      code: 'UPSTREAM_URL_EXPIRED',
      message: 'the upstream URL expired (at 2026-12-24T10:17:30.000Z) before the video could be copied; the last ' +
        'attempt: download answered 403'
    }
  }))
  return { ...task, result: { videos } }
}

/** One event as SSE's `data:`, the Redis Stream and the webhooks carry it. */
export function eventExample (type: EventType) {
  const data = eventTaskExample(type)
  return {
    id: 'evt_Q2hhbmdlIG51bWJlciAxMA',
    type,
    task_id: TASK_ID,
    caller: 'svc-a',
    sequence: data.sequence,
    timestamp: data.updated_at,
    data
  }
}

export const ENDPOINT_EXAMPLE = {
  id: 'ep_5f0c9a7b2d4e6f8a1c3b5d7e',
  url: 'https://hooks.example.com/kling',
  event_types: ['video.succeeded', 'video.failed'],
  description: 'orders service',
  enabled: true,
  disabled_reason: null,
  created_at: CREATED
}

export const SECRET_EXAMPLE = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw8MxdR7Tsaq4='

export const DELIVERY_EXAMPLE = {
  id: 'Xn4cV9pQ2rT7wY1zB6dF8hJk',
  webhook_id: 'msg_Xn4cV9pQ2rT7wY1zB6dF8hJk',
  endpoint_id: ENDPOINT_EXAMPLE.id,
  url: ENDPOINT_EXAMPLE.url,
  task_id: TASK_ID,
  type: 'video.succeeded',
  sequence: 4,
  status: 'failed',
  next_attempt_at: null as string | null,
  attempts: [
    { at: '2026-11-24T10:17:31.000Z', status_code: 500, error: null, duration_ms: 84 },
    { at: '2026-11-24T10:17:36.000Z', status_code: null, error: 'timed out after 15000 ms', duration_ms: 15001 }
  ],
  created_at: '2026-11-24T10:17:31.000Z',
  updated_at: '2026-11-24T10:17:51.000Z'
}

export const ORPHAN_EXAMPLE = {
  task_id: TASK_ID,
  upstream_task_id: '786543210987654321',
  external_task_id: '3c6f1d2a-8b9e-4f70-a1c2-d3e4f5a6b7c8',
  status: 'succeed',
  status_message: null,
  video_urls: ['https://cdn.klingai.example/videos/786543210987654321.mp4'],
  first_seen_at: '2026-11-24T10:17:30.000Z',
  last_seen_at: '2026-11-24T10:19:30.000Z',
  count: 2
}

/** A binary body cannot be shown in JSON; generators only need to know it is bytes. */
export const MP4_EXAMPLE = '(MP4 bytes)'
