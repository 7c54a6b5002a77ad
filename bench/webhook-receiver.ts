/**
 * Webhook receivers for the `webhook` bench, run as a child process so that their CPU is apart from the gateway's:
 * RECEIVERS (default 3) node:http servers on 127.0.0.1, each answering 204 at once and recording, per delivery,
 * when its request arrived (wall-clock ms with a fraction: performance.timeOrigin + performance.now(), the same clock
 * the bench reads in its own process), its `webhook-id`, and the body's `type` and `data.id` (the task), so the bench
 * can match it to the callback that made it. A repeated `webhook-id` (a retry) is counted, not recorded again.
 * Prints one JSON line `{"ports":[…]}` on stdout when listening. `GET /_records` on any of them answers every
 * record so far as `[port, webhook_id, task_id, type, at]` rows, and `{signed, unsigned, repeats}`.
 */
import { createServer, type Server } from 'node:http'

const count = Number(process.env.RECEIVERS ?? 3)
const now = () => performance.timeOrigin + performance.now()
type Rec = [number, string, string, string, number]
const records: Rec[] = []
const seen = new Set<string>()
let repeats = 0
let signed = 0
let unsigned = 0

function start (): Promise<{ server: Server, port: number }> {
  const server = createServer((req, res) => {
    const at = now()
    if (req.method === 'GET' && req.url === '/_records') {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ records, signed, unsigned, repeats }))
      return
    }
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      res.writeHead(204)
      res.end()
      const id = String(req.headers['webhook-id'] ?? '')
      const port = (server.address() as { port: number }).port
      if (typeof req.headers['webhook-signature'] === 'string') signed++
      else unsigned++
      const key = `${port} ${id}`
      if (seen.has(key)) { repeats++; return }
      seen.add(key)
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { type?: string, data?: { id?: string } }
        records.push([port, id, String(body.data?.id ?? ''), String(body.type ?? ''), at])
      } catch {
        records.push([port, id, '', 'unparsed', at])
      }
    })
  })
  server.keepAliveTimeout = 60_000
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as { port: number }).port }))
  })
}

const servers = await Promise.all(Array.from({ length: count }, start))
process.stdout.write(JSON.stringify({ ports: servers.map(s => s.port) }) + '\n')
const close = () => {
  for (const { server } of servers) { server.closeAllConnections(); server.close() }
  process.exit(0)
}
process.once('SIGTERM', close)
process.once('SIGINT', close)
