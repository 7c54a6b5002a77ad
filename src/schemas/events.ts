/**
 * Events in the OpenAPI document: the event schemas SSE and the Redis Stream carry, and one top-level `webhooks`
 * entry per event type describing the POST the gateway sends (src/jobs/deliver.ts). Plain OpenAPI 3.1 objects,
 * added by src/plugins/swagger.ts after the routes are rendered; the event types come from EVENT_TYPES.
 */
import { EVENT_TYPES, type EventType } from '../domain/task.ts'
import { eventExample, eventTaskExample } from './examples.ts'
import { HEADERS } from './common.ts'

/** Each event's summary and meaning; a Record, so that a new event type cannot be left undescribed. */
const MEANING: Record<EventType, [string, string]> = {
  'video.queued': ['the task was accepted', 'Its create answered 202; it waits for upstream capacity.'],
  'video.submitted': ['CometAPI accepted the task', '`upstream.task_id` is set.'],
  'video.processing': ['Kling started rendering', 'The task is being rendered upstream.'],
  'video.succeeded': ['the video is ready', '`result.videos[].upstream_url` works now, and `url` (the gateway\'s ' +
    'copy) once `video.stored` follows.'],
  'video.failed': ['the task failed', 'Upstream failed it, or it passed TASK_DEADLINE_MS: `error` says why.'],
  'video.canceled': ['the task was canceled', 'Canceled while still queued: by `POST /v1/videos/{id}/cancel`, or ' +
    'withdrawn after a create that answered 503 (`error.code` NOT_ACCEPTED).'],
  'video.stored': ['the result was copied into the gateway', '`result.videos[].url` serves the copies.'],
  'video.copy_failed': ['the result could not be copied, for good', 'The upstream URL expired before the copy ' +
    'succeeded: the video with a `copy_error` (code UPSTREAM_URL_EXPIRED) is lost, its content answers 410. The last ' +
    'event of the task.']
}

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` })

/** Schemas the routes do not declare themselves: events as SSE, the Redis Stream and webhooks carry them. */
export const eventSchemas = {
  EventType: {
    type: 'string', enum: [...EVENT_TYPES], description: 'one per task status, `video.stored` and `video.copy_failed`'
  },
  TaskEvent: {
    type: 'object',
    description: 'one entry of a task\'s event log: SSE `data:` and the Redis Stream\'s `data` field',
    required: ['id', 'type', 'task_id', 'caller', 'sequence', 'timestamp', 'data'],
    properties: {
      id: { type: 'string', description: '`evt_…`, never reused: SSE `id:`, and what `webhook-id` derives from' },
      type: ref('EventType'),
      task_id: { type: 'string' },
      caller: { type: 'string', description: 'the caller that owns the task' },
      sequence: { type: 'integer', minimum: 1, description: 'numbered per task from 1, no gaps' },
      timestamp: { type: 'string', format: 'date-time' },
      data: ref('Task')
    },
    example: eventExample('video.queued')
  }
}

const SIGNATURE = '`v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">` under the secret; ' +
  'during a rotation two signatures, separated by a space'

const header = (name: string, description: string, example: string) =>
  ({ name, in: 'header', required: true, description, schema: { type: 'string' }, example })

const retried = {
  description: 'retried after its Retry-After (seconds or an HTTP date), or on the schedule without one',
  headers: { 'Retry-After': { $ref: '#/components/headers/Retry-After' } }
}

function webhook (type: EventType) {
  const example = eventExample(type)
  // `copy_failed` → `CopyFailed`: operation ids are camel case.
  const name = type.slice('video.'.length).replace(/(^|_)([a-z])/g, (_, _sep: string, c: string) => c.toUpperCase())
  return {
    post: {
      operationId: `video${name}Webhook`,
      summary: `${type}: ${MEANING[type][0]}`,
      description: `${MEANING[type][1]}\n\nSent to every enabled endpoint of the task's caller subscribed to ` +
        `\`${type}\` (or to all types), and to the task's own \`webhook_url\` (signed with the secret of ` +
        '`GET /v1/webhook-secret`). ' +
        'At least once: dedupe on `webhook-id`; order by `data.sequence`. Verify the signature with any Standard ' +
        'Webhooks library before trusting the body.',
      tags: ['webhooks'],
      security: [],
      parameters: [
        header('webhook-id', 'one per event and destination, the same on every retry: dedupe on it',
          'msg_Xn4cV9pQ2rT7wY1zB6dF8hJk'),
        header('webhook-timestamp', 'Unix seconds of this attempt; refuse ones far from now (replays)', '1795515450'),
        header('webhook-signature', SIGNATURE, 'v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=')
      ],
      requestBody: {
        required: true,
        content: {
          'application/json': {
            schema: {
              type: 'object',
              required: ['type', 'timestamp', 'data'],
              properties: {
                type: { const: type },
                timestamp: { type: 'string', format: 'date-time', description: 'when the event happened' },
                data: ref('Task')
              }
            },
            example: { type, timestamp: example.timestamp, data: eventTaskExample(type) }
          }
        }
      },
      responses: {
        '2XX': { description: 'delivered; the body is ignored' },
        410: { description: 'Gone: no more attempts; a registered endpoint is disabled (register it again to resume)' },
        429: retried,
        503: retried,
        default: {
          description: 'a failed attempt (any other status, a redirect, which is never followed, a timeout after ' +
            'WEBHOOK_TIMEOUT_MS): retried on WEBHOOK_RETRY_SCHEDULE; after the last attempt the delivery is `failed` ' +
            '(`GET /v1/deliveries?status=failed`); five days of failures disable the endpoint'
        }
      }
    }
  }
}

/** The top-level `webhooks` of the document, one entry per event type. */
export const webhookDocs = () => Object.fromEntries(EVENT_TYPES.map(t => [t, webhook(t)]))

/** `components.headers`, from the headers routes name. */
export const headerComponents = () => Object.fromEntries(Object.entries(HEADERS).map(([name, h]) => [name, { ...h }]))
