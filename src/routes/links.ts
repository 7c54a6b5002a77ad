import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { NotFound } from '../domain/errors.ts'
import { canSee, type Caller } from '../plugins/auth.ts'
import { bodyProblems, internal, invalidField, json, problem, unauthorized, unavailable } from '../schemas/common.ts'
import { TaskParamsSchema } from '../schemas/videos.ts'
import { makeLinks } from '../services/links.ts'

const LinksSchema = Type.Object({
  content_url: Type.String({ description: '`GET /v1/videos/{id}/content?sig=…` (add `&index=n` for another video)' }),
  events_url: Type.String({ description: '`GET /v1/videos/{id}/events?sig=…` (add `&last_event_id=` to resume)' }),
  expires_at: Type.String({ format: 'date-time', description: 'when both stop working (LINK_TTL_S from now)' })
})

/** `POST /v1/videos/:id/links`: signed links for browsers (src/services/links.ts). */
const links: FastifyPluginAsyncTypebox = async (app) => {
  const { store, config, clock } = app.deps

  app.post('/:id/links', {
    onRequest: app.authenticate,
    schema: {
      tags: ['videos'],
      operationId: 'createVideoLinks',
      summary: 'Short-lived signed URLs of the task\'s content and events, for browsers',
      description: 'URLs of `GET /v1/videos/{id}/content` and `GET /v1/videos/{id}/events` carrying `?sig=`, which ' +
        'those two routes accept instead of the Authorization header, so a `<video src>` or an `EventSource` can ' +
        'open them. Each works for this task, as this caller, until `expires_at` (LINK_TTL_S); nothing is stored, ' +
        'so a link cannot be revoked except by removing the caller\'s key or changing LINK_SECRET. Treat it as a ' +
        'credential. The caller that owns the task, or an admin key. No body is needed.',
      security: [{ bearer: [] }],
      params: TaskParamsSchema,
      response: {
        200: json('the links', LinksSchema, {
          content_url: 'https://gateway.example.com/v1/videos/0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/content?sig=' +
            'alice.1795000000.2m9xQ0fJ3h8Vq1Wk4rT6yU7iO9pA0sD2fG3hJ4kL5zX',
          events_url: 'https://gateway.example.com/v1/videos/0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/events?sig=' +
            'alice.1795000000.7Yh2bN4mQ8wE1rT5uI9oP3aS6dF0gH2jK4lZ6xC8vB1',
          expires_at: '2026-11-18T05:46:40.000Z'
        }),
        ...bodyProblems('1 MiB'),
        400: invalidField('invalid id', '/id', 'must match pattern "^[A-Za-z0-9-]+$"', 'params'),
        401: unauthorized(),
        404: problem(404, 'no such task for this caller'),
        500: internal(),
        503: unavailable()
      }
    }
  }, async (request) => {
    const caller = request.caller as Caller
    const task = await store.get(request.params.id)
    if (!canSee(caller, task)) throw new NotFound('task')
    return makeLinks(config, caller.name, task.id, clock())
  })
}
export default links
