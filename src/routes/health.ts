import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { internal, json } from '../schemas/common.ts'
import { ACCOUNT_PROBLEMS } from '../upstream/client.ts'

const HealthSchema = Type.Object({
  status: Type.Union([
    Type.Literal('ok'), Type.Literal('unavailable'), Type.Literal('draining'), Type.Literal('misconfigured')
  ]),
  redis: Type.Optional(Type.String()),
  reason: Type.Optional(Type.String({ description: 'why a running replica must not take traffic (misconfigured)' })),
  upstream: Type.Optional(Type.Object({
    status: Type.Literal('paused'),
    reason: Type.Union(ACCOUNT_PROBLEMS.map(r => Type.Literal(r)), {
      description: '`key` (refused or revoked), `balance` (no money or quota), `account` (Kling 1100-1102)'
    }),
    code: Type.String({ description: 'upstream\'s error code that paused it, e.g. `COMET_insufficient_user_quota`' }),
    since: Type.String({ format: 'date-time' })
  }, {
    description: 'present while the submit queue is paused for an upstream account problem (on every replica): ' +
      'reads, creates and callbacks are still served, queued tasks wait; it resumes by itself'
  }))
})

/**
 * Liveness never touches Redis. Readiness answers 503 (a health body, not a problem: load balancers and probes
 * read `status`) while draining after SIGTERM, while the replica knows it is misconfigured against its peers, and
 * within 2 s when Redis is unreachable.
 */
const health: FastifyPluginAsyncTypebox = async (app) => {
  const { lifecycle } = app.deps

  app.get('/live', {
    schema: {
      tags: ['health'],
      operationId: 'live',
      summary: 'Liveness',
      description: 'Answers 200 while the process serves HTTP; never touches Redis. No API key.',
      response: { 200: json('alive', HealthSchema, { status: 'ok' }), 500: internal() }
    }
  }, async () => ({ status: 'ok' as const }))

  app.get('/ready', {
    schema: {
      tags: ['health'],
      operationId: 'ready',
      summary: 'Readiness',
      description: 'Whether this replica should take traffic: 200 once Redis answers a PING within 1.5 s. 503 (a ' +
        'health body, not a problem: probes read `status`) while draining after SIGTERM, while misconfigured ' +
        'against its peers, or while Redis is unreachable. While upstream refuses the account (a revoked key, no ' +
        'balance) it stays 200, since everything but sending is served, and says why in `upstream`. No API key.',
      response: {
        200: json('ready', HealthSchema, { status: 'ok', redis: 'ok' }),
        503: {
          ...json('not ready: `draining` (no Retry-After: this replica is going away), `misconfigured` or ' +
            '`unavailable`', HealthSchema, { status: 'unavailable', redis: 'unreachable' }, ['Retry-After'])
        },
        500: internal()
      }
    }
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
      const [, paused] = await Promise.race([Promise.all([app.deps.redis.ping(), app.deps.pause.state()]), deadline])
      if (paused === null) return { status: 'ok' as const, redis: 'ok' }
      const { reason, code, since } = paused
      return {
        status: 'ok' as const,
        redis: 'ok',
        upstream: { status: 'paused' as const, reason, code, since: new Date(since).toISOString() }
      }
    } catch {
      return await reply.code(503).header('retry-after', '1')
        .send({ status: 'unavailable', redis: 'unreachable' })
    } finally {
      clearTimeout(timer)
    }
  })
}
export default health
