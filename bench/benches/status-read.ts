/**
 * status-read (docs/DESIGN.md, "Performance targets" 3): GET /v1/videos/:id with auth over `submitted` tasks, 50
 * connections for 10 s after a 3 s warm-up. Floor: bare Fastify doing one HGETALL of the same task hash and returning
 * it as JSON.
 */
import { join } from 'node:path'
import { row, type Row } from '../lib/report.ts'
import {
  gatewayWarnings, makeSubmittedTasks, runLoad, startFloor, startGateway, startRedis, startSimulator, tmp
} from '../lib/stack.ts'
import type { LoadRequest } from '../load.ts'
import { commandStats, perRequest } from '../lib/redis-stats.ts'
import { cpuShares, okCount, phaseDetails } from '../lib/phase.ts'

const TASKS = 200
const CONNECTIONS = 50
const DURATION_MS = 10_000
const WARMUP_MS = 3000
const MAX_REQUESTS = 500_000

export async function statusRead (): Promise<Row[]> {
  const dir = tmp('status-read')
  const stops: Array<() => Promise<void>> = []
  try {
    const redis = await startRedis(join(dir.path, 'redis'))
    stops.unshift(redis.stop)
    const sim = await startSimulator()
    stops.unshift(sim.stop)
    const gw = await startGateway({ redisUrl: redis.url, simUrl: sim.url, dataDir: join(dir.path, 'gateway') })
    const tasks = await makeSubmittedTasks(gw, TASKS)
    const requests: LoadRequest[] = tasks.map(t => ({ method: 'GET', path: `/v1/videos/${t.id}` }))
    const spec = {
      mode: 'closed' as const,
      connections: CONNECTIONS,
      warmupMs: WARMUP_MS,
      warmupMaxRequests: MAX_REQUESTS,
      durationMs: DURATION_MS,
      maxRequests: MAX_REQUESTS,
      requests
    }
    const s0 = await commandStats(redis.url)
    const ours = await runLoad({
      ...spec,
      origin: gw.origin,
      headers: { authorization: `Bearer ${gw.apiKey}` },
      watchPids: { gateway: gw.pid, redis: redis.pid, runner: process.pid }
    }, 60_000)
    const s1 = await commandStats(redis.url)
    await gw.stop()
    const warnings = gatewayWarnings(gw)
    const floor = await startFloor(redis.url)
    const base = await runLoad({
      ...spec,
      origin: floor.origin,
      headers: {},
      watchPids: { floor: floor.pid, redis: redis.pid, runner: process.pid }
    }, 60_000)
    const s2 = await commandStats(redis.url)
    await floor.stop()

    const m = ours.measured
    const f = base.measured
    const bad = m.requests - okCount(m) + m.errors
    return [
      row({
        bench: 'status-read',
        metric: `req/s (c=${CONNECTIONS})`,
        unit: 'req/s',
        ours: m.rps,
        floor: f.rps,
        target: { text: '≥ 0.6× floor', met: x => x >= 0.6 * f.rps && bad === 0 },
        others_share: Math.max(cpuShares(m).others_share ?? 0, cpuShares(f).others_share ?? 0),
        details: {
          ours: phaseDetails(ours, CONNECTIONS),
          floor: phaseDetails(base, CONNECTIONS),
          redis_per_request: {
            ours: perRequest(s0, s1, ours.warmup.requests + ours.measured.requests),
            floor: perRequest(s1, s2, base.warmup.requests + base.measured.requests)
          },
          tasks: TASKS,
          gateway_log_warnings: warnings
        }
      }),
      row({ bench: 'status-read', metric: 'latency p50', unit: 'ms', ours: m.latencyMs.p50, floor: f.latencyMs.p50 }),
      row({
        bench: 'status-read',
        metric: 'latency p99',
        unit: 'ms',
        ours: m.latencyMs.p99,
        floor: f.latencyMs.p99,
        target: { text: '< 15 ms', met: x => x < 15 }
      }),
      row({
        bench: 'status-read',
        metric: 'non-2xx + errors',
        unit: '',
        ours: bad,
        floor: f.requests - okCount(f) + f.errors,
        target: { text: '= 0', met: x => x === 0 }
      })
    ]
  } finally {
    for (const stop of stops) await stop().catch(() => {})
    dir.remove()
  }
}
