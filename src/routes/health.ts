import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'

const HealthSchema = Type.Object({
  status: Type.Union([
    Type.Literal('ok'), Type.Literal('unavailable'), Type.Literal('draining'), Type.Literal('misconfigured')
  ]),
  redis: Type.Optional(Type.String()),
  reason: Type.Optional(Type.String({ description: 'why a running replica must not take traffic (misconfigured)' }))
})

/**
 * Liveness never touches Redis. Readiness answers 503 (a health body, not a problem: load balancers and probes
 * read `status`) while draining after SIGTERM, while the replica knows it is misconfigured against its peers, and
 * within 2 s when Redis is unreachable.
 */
const health: FastifyPluginAsyncTypebox = async (app) => {
  const { lifecycle } = app.deps

  app.get('/live', {
    schema: { tags: ['health'], operationId: 'live', response: { 200: HealthSchema } }
  }, async () => ({ status: 'ok' as const }))

  app.get('/ready', {
    schema: { tags: ['health'], operationId: 'ready', response: { 200: HealthSchema, 503: HealthSchema } }
  }, async (_request, reply) => {
    // No Retry-After while draining: this replica is going away, and asking again here will not help.
    if (lifecycle.draining) return await reply.code(503).send({ status: 'draining' })
    if (lifecycle.fault !== null) {
      const body = { status: 'misconfigured' as const, reason: lifecycle.fault }
      return await reply.code(503).header('retry-after', '30').send(body)
    }
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error('timeout')), 1500)
    })
    try {
      await Promise.race([app.deps.redis.ping(), deadline])
      return { status: 'ok' as const, redis: 'ok' }
    } catch {
      return await reply.code(503).header('retry-after', '1')
        .send({ status: 'unavailable', redis: 'unreachable' })
    } finally {
      clearTimeout(timer)
    }
  })
}
export default health
