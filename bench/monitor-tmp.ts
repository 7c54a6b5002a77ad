import { join } from 'node:path'
import { writeFileSync } from 'node:fs'
import { Redis } from 'ioredis'
import { Pool } from 'undici'
import { createServer } from 'node:http'
import { startGateway, startRedis, tmp } from './lib/stack.ts'
import { stopAll } from './lib/proc.ts'
import { Simulator } from '../simulator/app.ts'

const dir = tmp('mon')
try {
  const redis = await startRedis(join(dir.path, 'redis'))
  const sim = new Simulator({ auto: true, processingAfterMs: 200, finishAfterMs: 600 })
  const simUrl = await sim.listen(0, '127.0.0.1')
  let stored = 0
  let got = 0
  const server = createServer((req, res) => { const c: Buffer[] = []; req.on('data', (x: Buffer) => c.push(x)); req.on('end', () => { got++; if (Buffer.concat(c).toString().includes('"video.stored"')) stored++; res.end() }) })
  await new Promise<void>(r => server.listen(0, '127.0.0.1', r))
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/h`
  const gw = await startGateway({ redisUrl: redis.url, simUrl, dataDir: join(dir.path, 'gw'), env: { WEBHOOK_ALLOW_PRIVATE: 'true', MIRROR_ALLOW_PRIVATE: 'true' } })
  const pool = new Pool(gw.origin)
  const headers = { authorization: `Bearer ${gw.apiKey}`, 'content-type': 'application/json' }
  const ep = await pool.request({ method: 'POST', path: '/v1/webhook-endpoints', headers, body: JSON.stringify({ url }) })
  await ep.body.dump()
  await new Promise(r => setTimeout(r, 2000))
  const mon = new Redis(redis.url)
  const lines: string[] = []
  const m = await mon.monitor()
  m.on('monitor', (time: string, args: string[], source: string) => { lines.push(`${time} ${source} ${args.map(a => a.length > 60 ? a.slice(0, 60) + '…' : a).join(' ')}`) })
  const t0 = Date.now()
  const r = await pool.request({ method: 'POST', path: '/v1/videos', headers, body: JSON.stringify({ image_list: [{ image: 'https://images.example.com/a.png' }, { image: 'https://images.example.com/b.png' }], prompt: 'x' }) })
  console.error(r.statusCode, await r.body.text())
  while (stored < 1 && Date.now() - t0 < 20000) await new Promise(r => setTimeout(r, 20))
  await new Promise(r => setTimeout(r, 300))
  console.error('done in', Date.now() - t0, 'webhooks', got)
  writeFileSync('/tmp/monitor.txt', lines.join('\n') + '\n')
  m.disconnect(); mon.disconnect()
  await pool.close(); server.closeAllConnections(); server.close(); await sim.close()
} finally {
  await stopAll()
  dir.remove()
}
