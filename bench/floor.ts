/**
 * The floor: bare Fastify (no logger, no schemas, no plugins) making the same Redis round trips a gateway route
 * needs at least, on the same machine, against the same redis-server. Run as a child by the benchmarks:
 * PORT, REDIS_URL, REDIS_PREFIX, CREATE_BODY_LIMIT_BYTES.
 *
 * - POST /v1/videos: parse the JSON body (same bodyLimit as the gateway), decode each Base64 image of the image list
 *   (1 KB or more) and store its bytes (one SET each, as the gateway parks them), 202; deleted after the answer.
 * - POST /callbacks/kling?token=v2.<kid>.<exp>.<id>.<mac>: query and body schemas, one EVALSHA reading the task's
 *   status (a transition that finds nothing to do), 200 through a response schema.
 * - GET /v1/videos/:id: one HGETALL, returned through a response schema.
 */
import Fastify from 'fastify'
import { Redis, type Result } from 'ioredis'

declare module 'ioredis' {
  interface RedisCommander<Context> {
    floorTrivial: (key: string) => Result<string | null, Context>
  }
}

const port = Number(process.env.PORT)
const prefix = process.env.REDIS_PREFIX ?? 'kg'
const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')
redis.defineCommand('floorTrivial', { numberOfKeys: 1, lua: 'return redis.call("HGET", KEYS[1], "status")' })
const taskKey = (id: string) => `{${prefix}}:task:${id}`

const app = Fastify({ logger: false })
let n = 0

app.get('/health/live', async () => ({ status: 'ok' }))

const bodyLimit = Number(process.env.CREATE_BODY_LIMIT_BYTES ?? 60 * 1024 * 1024)
app.post('/v1/videos', { bodyLimit }, async (request, reply) => {
  const body = request.body as { image_list?: Array<{ image?: unknown }> }
  const id = `floor-${++n}`
  const stored: string[] = []
  for (const [i, item] of (body.image_list ?? []).entries()) {
    // A real image only (hostile-bodies sends 50,000 8-character stand-ins, which no one would park).
    if (typeof item.image !== 'string' || item.image.length < 1024 || /^https?:/i.test(item.image)) continue
    const key = `{${prefix}}:floor:${id}:${i}`
    await redis.set(key, Buffer.from(item.image, 'base64'))
    stored.push(key)
  }
  reply.raw.once('finish', () => { if (stored.length > 0) redis.del(...stored).catch(() => {}) })
  return await reply.code(202).send({ id, status: 'queued' })
})

// The callback as a bare service would write it: schema-validated query and body, the token's task id taken
// from `v2.<kid>.<exp>.<task id>.<mac>` (no MAC check), one Lua call on the real task that finds nothing to do.
const callbackSchema = {
  querystring: { type: 'object', properties: { token: { type: 'string', maxLength: 256 } } },
  body: { type: 'object', additionalProperties: true, maxProperties: 64 },
  response: {
    200: {
      type: 'object',
      properties: { outcome: { type: 'string' }, status: { type: 'string' } },
      required: ['outcome', 'status']
    }
  }
}
app.post<{ Querystring: { token?: string } }>('/callbacks/kling', { bodyLimit: 64 * 1024, schema: callbackSchema },
  async (request) => {
    const id = (request.query.token ?? '').split('.')[3] ?? ''
    const status = await redis.floorTrivial(taskKey(id))
    return { outcome: 'duplicate', status: status ?? 'missing' }
  })

// The read: one HGETALL, serialized through a response schema of the task's fields.
const field = { type: 'string' }
const readSchema = {
  response: {
    200: {
      type: 'object',
      properties: Object.fromEntries(['id', 'caller', 'kind', 'status', 'created_at', 'updated_at', 'sequence',
        'reference', 'metadata', 'request', 'external_task_id', 'upstream', 'result', 'error'].map(k => [k, field]))
    }
  }
}
app.get<{ Params: { id: string } }>('/v1/videos/:id', { schema: readSchema }, async (request) => {
  return await redis.hgetall(taskKey(request.params.id))
})

await app.listen({ host: '127.0.0.1', port })
const close = () => {
  app.close().then(async () => { await redis.quit() }).catch(() => {}).finally(() => process.exit(0))
}
process.once('SIGTERM', close)
process.once('SIGINT', close)
