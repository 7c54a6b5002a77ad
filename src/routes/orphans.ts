import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { GatewayError } from '../domain/errors.ts'
import type { Caller } from '../plugins/auth.ts'
import { internal, invalidField, json, problem, unauthorized, unavailable } from '../schemas/common.ts'
import { ORPHAN_EXAMPLE } from '../schemas/examples.ts'
import type { Orphan } from '../store/orphans.ts'

const OrphanSchema = Type.Object({
  task_id: Type.String({ description: 'our task id, from the callback token; the task itself is gone' }),
  upstream_task_id: Type.String(),
  external_task_id: Type.Union([Type.String(), Type.Null()]),
  status: Type.String({ description: 'Kling\'s task_status in the last callback' }),
  status_message: Type.Union([Type.String(), Type.Null()]),
  video_urls: Type.Array(Type.String(), { description: 'result video URLs upstream reported (they expire)' }),
  first_seen_at: Type.String({ format: 'date-time' }),
  last_seen_at: Type.String({ format: 'date-time' }),
  count: Type.Integer({ minimum: 1, description: 'callbacks received for it' })
}, { $id: 'OrphanCallback' })

const view = (o: Orphan) => ({
  task_id: o.taskId,
  upstream_task_id: o.upstreamTaskId,
  external_task_id: o.externalTaskId,
  status: o.status,
  status_message: o.statusMessage,
  video_urls: o.videoUrls,
  first_seen_at: new Date(o.firstSeenAt).toISOString(),
  last_seen_at: new Date(o.lastSeenAt).toISOString(),
  count: o.count
})

/** `GET /v1/orphans`: callbacks whose task no longer exists (src/store/orphans.ts), for admins only. */
const orphans: FastifyPluginAsyncTypebox = async (app) => {
  const { orphans: store } = app.deps
  app.addSchema(OrphanSchema)

  app.get('/orphans', {
    onRequest: app.authenticate,
    schema: {
      tags: ['admin'],
      operationId: 'listOrphanCallbacks',
      summary: 'Callbacks whose task no longer exists, most recently seen first (admin keys only)',
      description: 'Upstream tasks CometAPI reported for tasks the gateway no longer has (lost in a Redis rollback ' +
        'or restore, or deleted): they may be paid for. Admin keys only; any other key gets the 404 of a route ' +
        'that does not exist. Page with `next_cursor`.',
      security: [{ bearer: [] }],
      querystring: Type.Object({
        limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
        cursor: Type.Optional(Type.String({ maxLength: 100, pattern: '^\\d+:[A-Za-z0-9_.-]+$' }))
      }, { additionalProperties: false }),
      response: {
        200: json('a page of orphaned callbacks', Type.Object({
          data: Type.Array(Type.Ref('OrphanCallback')),
          next_cursor: Type.Union([Type.String(), Type.Null()])
        }), { data: [ORPHAN_EXAMPLE], next_cursor: null }),
        400: invalidField('invalid query', '/limit', 'must be <= 100', 'query'),
        401: unauthorized(),
        404: problem(404, 'not an admin key: answered as for a route that does not exist', {
          detail: 'no route GET /v1/orphans'
        }),
        500: internal(),
        503: unavailable()
      }
    }
  }, async (request) => {
    // 404, never 403 (docs/API.md, "Auth and roles"), and the same answer as an unknown route's, so other callers
    // learn nothing.
    if (!(request.caller as Caller).admin) {
      throw new GatewayError('NOT_FOUND', 404, `no route ${request.method} ${request.url.split('?')[0]}`)
    }
    const page = await store.list({ limit: request.query.limit, cursor: request.query.cursor })
    return { data: page.orphans.map(view), next_cursor: page.nextCursor }
  })
}
export default orphans
