import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'

const HealthSchema = Type.Object({ status: Type.String(), redis: Type.Optional(Type.String()) })

/** Liveness never touches Redis; readiness answers 503 within 2 s when Redis is unreachable. */
const health: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/live', {
    schema: { tags: ['health'], operationId: 'live', response: { 200: HealthSchema } }
  }, async () => ({ status: 'ok' }))

  app.get('/ready', {
    schema: { tags: ['health'], operationId: 'ready', response: { 200: HealthSchema, 503: HealthSchema } }
  }, async (_request, reply) => {
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error('timeout')), 1500) })
    try {
      await Promise.race([app.deps.redis.ping(), deadline])
      return { status: 'ok', redis: 'ok' }
    } catch {
      return reply.code(503).header('retry-after', '1').send({ status: 'unavailable', redis: 'unreachable' })
    } finally {
      clearTimeout(timer)
    }
  })
}
export default health
