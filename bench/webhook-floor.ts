/**
 * The floor of the `webhook` bench: what a bare service needs at least to turn a callback into three signed
 * webhooks, durably. Bare Fastify (no logger, no plugins): POST /callbacks/kling?token=v2.<kid>.<exp>.<id>.<mac>
 * takes the task id from the token (no MAC check) and the status from the body, does one XADD to a stream of its own
 * and answers 200; one reader XREADGROUP-s that stream (COUNT 100, BLOCK 500), POSTs each entry to every URL of
 * WEBHOOK_URLS at once, signed with standardwebhooks (a keep-alive pool per receiver), and XACKs the batch when
 * every POST has answered. Run as a child by the bench: PORT, REDIS_URL, WEBHOOK_URLS (comma-separated).
 */
import { randomBytes } from 'node:crypto'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import { Webhook } from 'standardwebhooks'
import { Pool } from 'undici'

const port = Number(process.env.PORT)
const urls = (process.env.WEBHOOK_URLS ?? '').split(',').filter(u => u !== '').map(u => new URL(u))
const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')
const reader = redis.duplicate()
const STREAM = '{floor}:webhook-events'
const GROUP = 'webhooks'
const signer = new Webhook(`whsec_${randomBytes(32).toString('base64')}`)
const pools = urls.map(u => new Pool(u.origin, { connections: 16, keepAliveTimeout: 60_000 }))
const TYPES: Record<string, string> = { processing: 'video.processing', succeed: 'video.succeeded' }

await redis.xgroup('CREATE', STREAM, GROUP, '$', 'MKSTREAM').catch(() => {})

const app = Fastify({ logger: false })
app.get('/health/live', async () => ({ status: 'ok' }))
app.post<{ Querystring: { token?: string }, Body: { task_status?: string } }>('/callbacks/kling',
  { bodyLimit: 64 * 1024 }, async (request) => {
    const id = (request.query.token ?? '').split('.')[3] ?? ''
    const type = TYPES[request.body.task_status ?? ''] ?? 'video.unknown'
    await redis.xadd(STREAM, '*', 'task_id', id, 'type', type)
    return { outcome: 'applied', status: type }
  })

let n = 0
async function send (entryId: string, fields: string[]): Promise<void> {
  const taskId = fields[fields.indexOf('task_id') + 1]
  const type = fields[fields.indexOf('type') + 1]
  const payload = JSON.stringify({ type, timestamp: new Date().toISOString(), data: { id: taskId, status: type } })
  const msgId = `msg_${entryId}_${++n}`
  const now = new Date()
  await Promise.all(urls.map(async (u, i) => {
    const res = await pools[i].request({
      method: 'POST',
      path: u.pathname,
      body: payload,
      headers: {
        'content-type': 'application/json',
        'webhook-id': msgId,
        'webhook-timestamp': String(Math.floor(now.getTime() / 1000)),
        'webhook-signature': signer.sign(msgId, now, payload)
      }
    })
    await res.body.dump()
  }))
}

const state = { running: true }
async function readLoop (): Promise<void> {
  while (state.running) {
    try {
      const res = await reader.xreadgroup('GROUP', GROUP, 'floor', 'COUNT', 100, 'BLOCK', 500,
        'STREAMS', STREAM, '>') as Array<[string, Array<[string, string[]]>]> | null
      const entries = res?.[0][1] ?? []
      if (entries.length === 0) continue
      await Promise.all(entries.map(async ([id, fields]) => { await send(id, fields) }))
      await redis.xack(STREAM, GROUP, ...entries.map(([id]) => id))
    } catch {
      if (state.running) await new Promise(resolve => setTimeout(resolve, 100))
    }
  }
}
const loop = readLoop()

await app.listen({ host: '127.0.0.1', port })
const close = () => {
  state.running = false
  reader.disconnect()
  app.close().then(async () => { await loop; await redis.quit() }).catch(() => {}).finally(() => process.exit(0))
}
process.once('SIGTERM', close)
process.once('SIGINT', close)
