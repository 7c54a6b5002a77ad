import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { GatewayError } from '../domain/errors.ts'
import type { Caller } from '../plugins/auth.ts'
import { problem } from '../schemas/common.ts'
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
      security: [{ bearer: [] }],
      querystring: Type.Object({
        limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
        cursor: Type.Optional(Type.String({ maxLength: 100, pattern: '^\\d+:[A-Za-z0-9_.-]+$' }))
      }, { additionalProperties: false }),
      response: {
        200: Type.Object({
          data: Type.Array(Type.Ref('OrphanCallback')),
          next_cursor: Type.Union([Type.String(), Type.Null()])
        }),
        400: problem('invalid query'),
        401: problem('missing or unknown API key'),
        404: problem('not an admin key: answered as for a route that does not exist')
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
