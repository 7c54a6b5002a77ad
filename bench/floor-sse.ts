/**
 * The SSE floor of bench/benches/sse.ts: bare Fastify (no logger, no auth, no schemas) holding text/event-stream
 * responses, fed by one XREAD tail of the gateway's event stream, writing the same frame bytes the gateway does
 * (`id:` event id, `event:` type, `data:` the stored event JSON) to every stream of the event's task, ending them
 * after a task's last event, and one shared `: ping` timer. No replay, no catch-up: what holding streams costs at
 * least. `POST /gc` collects garbage (with --expose-gc). Run as a child by the benchmark: PORT, REDIS_URL,
 * REDIS_PREFIX, HEARTBEAT_MS.
 */
import Fastify from 'fastify'
import type { ServerResponse } from 'node:http'
import { Redis } from 'ioredis'

const port = Number(process.env.PORT)
const prefix = process.env.REDIS_PREFIX ?? 'kg'
const streamKey = `{${prefix}}:events`
const heartbeatMs = Number(process.env.HEARTBEAT_MS ?? 15_000)
// A blocking read holds its connection: one for the tail, apart from nothing else (the floor has no other reads).
const reader = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: null })
const LAST = new Set(['video.stored', 'video.copy_failed', 'video.failed', 'video.canceled'])

const byTask = new Map<string, Set<ServerResponse>>()
const app = Fastify({ logger: false })

app.get('/health/live', async () => ({ status: 'ok' }))
// The bench collects this fresh process's startup garbage before it reads RSS (run with --expose-gc), or the
// "before" figure would shrink under it; the gateway gets no such help, so its figure is if anything high.
app.post('/gc', async () => { (globalThis as { gc?: () => void }).gc?.(); return { ok: true } })

app.get<{ Params: { id: string } }>('/v1/videos/:id/events', async (request, reply) => {
  reply.hijack()
  const raw = reply.raw
  raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' })
  raw.write('retry: 2000\n\n')
  const id = request.params.id
  let set = byTask.get(id)
  if (set === undefined) byTask.set(id, set = new Set())
  set.add(raw)
  raw.on('close', () => {
    set.delete(raw)
    if (set.size === 0 && byTask.get(id) === set) byTask.delete(id)
  })
})

const heartbeat = setInterval(() => {
  for (const set of byTask.values()) for (const raw of set) raw.write(': ping\n\n')
}, heartbeatMs)

const state = { running: true }
async function tail (): Promise<void> {
  let after = '$'
  while (state.running) {
    const res = await reader.xread('COUNT', 500, 'BLOCK', 500, 'STREAMS', streamKey, after)
      .catch(() => null) as Array<[string, Array<[string, string[]]>]> | null
    for (const [entryId, fields] of res?.[0][1] ?? []) {
      after = entryId
      const f: Record<string, string> = {}
      for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]] = fields[i + 1]
      const set = byTask.get(f.task_id)
      if (set === undefined) continue
      const frame = `id: ${f.id}\nevent: ${f.type}\ndata: ${f.data}\n\n`
      for (const raw of set) {
        raw.write(frame)
        if (LAST.has(f.type)) raw.end()
      }
    }
  }
}

await app.listen({ host: '127.0.0.1', port })
const tailing = tail()
const close = () => {
  state.running = false
  clearInterval(heartbeat)
  for (const set of byTask.values()) for (const raw of set) raw.end()
  app.close()
    .then(async () => { reader.disconnect(); await tailing })
    .catch(() => {})
    .finally(() => process.exit(0))
}
process.once('SIGTERM', close)
process.once('SIGINT', close)
