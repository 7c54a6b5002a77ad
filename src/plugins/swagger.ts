import fp from 'fastify-plugin'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance } from 'fastify'
import { ProblemSchema } from '../schemas/common.ts'

/** OpenAPI 3.1 from the route schemas; only tagged routes are part of the contract (`hideUntagged`). */
export default fp(async function docs (app: FastifyInstance) {
  app.addSchema(ProblemSchema)
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'kling-gateway',
        version: '1',
        description: 'A gateway to CometAPI\'s Kling multi-image-to-video: strict validation, tasks in Redis, callbacks, reconciliation, webhooks and SSE.'
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'an API key from API_KEYS or ADMIN_API_KEYS' } } },
      tags: [
        { name: 'videos', description: 'video tasks' },
        { name: 'webhooks', description: 'webhook endpoints and deliveries' },
        { name: 'callbacks', description: 'CometAPI → gateway' },
        { name: 'admin', description: 'operators only (ADMIN_API_KEYS)' },
        { name: 'health', description: 'liveness and readiness' }
      ]
    },
    hideUntagged: true,
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => String(json.$id ?? `def-${i}`) }
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
}, { name: 'docs' })
