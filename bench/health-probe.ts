/**
 * `/health/live` latency from a process of its own (its event loop is not the sender's): ORIGIN, INTERVAL_MS,
 * DURATION_MS. Requests are scheduled on a fixed clock and each latency is measured from its scheduled time, so a
 * stalled server shows up as the wait it causes (no coordinated omission). Prints one JSON line and exits.
 */
import { Pool } from 'undici'
import { summarize } from './lib/stats.ts'

const origin = process.env.ORIGIN as string
const interval = Number(process.env.INTERVAL_MS ?? 20)
const duration = Number(process.env.DURATION_MS ?? 10_000)
const pool = new Pool(origin, { connections: 8 })
const latencies: number[] = []
let errors = 0
const start = performance.now()
const pending: Array<Promise<void>> = []
for (let i = 0; i * interval < duration; i++) {
  const at = start + i * interval
  const wait = at - performance.now()
  if (wait > 0) await new Promise(resolve => setTimeout(resolve, wait))
  pending.push(pool.request({ method: 'GET', path: '/health/live', headersTimeout: 10_000 })
    .then(async res => {
      await res.body.text()
      if (res.statusCode === 200) latencies.push(performance.now() - at)
      else errors++
    }, () => { errors++ }))
}
await Promise.all(pending)
await pool.close()
process.stdout.write(JSON.stringify({ ...summarize(latencies), errors }) + '\n')
