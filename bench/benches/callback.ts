/**
 * callback (docs/DESIGN.md, "Performance targets" 1): POST /callbacks/kling?token=… with a valid ~1 KB non-terminal
 * Kling body against existing `submitted` tasks, 50 connections for 10 s after a 3 s warm-up. The warm-up's first pass
 * moves each task to `processing`; everything after is a duplicate (a read, the per-task rate counter, and a transition
 * attempt that finds nothing to do). The gateway allows 120 callbacks per task per minute, so the run is spread over
 * enough tasks that none reaches that limit (429s are counted and reported, and would fail the target). Floor: bare
 * Fastify with the same schemas doing one EVALSHA on the task per request (it has no per-task limit, so its run is
 * bounded by time and a larger count). Targets (issue 15): ≥ 0.5× the floor and ≥ 10,000/s, p99 ≤ 2× the floor's.
 */
import { join } from 'node:path'
import { callbackToken } from '../../src/domain/callback-token.ts'
import { row, type Row } from '../lib/report.ts'
import {
  gatewayWarnings, makeSubmittedTasks, runLoad, startFloor, startGateway, startRedis, startSimulator, tmp
} from '../lib/stack.ts'
import { cpuShares, okCount, phaseDetails } from '../lib/phase.ts'
import type { LoadRequest } from '../load.ts'
import { commandStats, perRequest } from '../lib/redis-stats.ts'

const TASKS = 600
const PER_TASK_WARMUP = 15
const PER_TASK_MEASURED = 100
const CONNECTIONS = 50
const DURATION_MS = 10_000
const WARMUP_MS = 3000

/** A Kling callback as CometAPI posts it (flat), padded with a realistic status message to about 1 KB. */
function callbackBody (upstreamId: string): string {
  const now = Date.now()
  return JSON.stringify({
    task_id: upstreamId,
    task_status: 'processing',
    task_status_msg: 'The task is being processed. '.repeat(24).trim(),
    task_info: {},
    task_result: {},
    created_at: now - 5000,
    updated_at: now
  })
}

export async function callback (): Promise<Row[]> {
  const dir = tmp('callback')
  const stops: Array<() => Promise<void>> = []
  try {
    const redis = await startRedis(join(dir.path, 'redis'))
    stops.unshift(redis.stop)
    const sim = await startSimulator()
    stops.unshift(sim.stop)
    const gw = await startGateway({ redisUrl: redis.url, simUrl: sim.url, dataDir: join(dir.path, 'gateway') })
    const tasks = await makeSubmittedTasks(gw, TASKS)
    const HOUR = 3600_000
    const requests: LoadRequest[] = tasks.map(t => ({
      method: 'POST',
      path: `/callbacks/kling?token=${encodeURIComponent(callbackToken(gw.callbackSecret, t.id, Date.now() + HOUR))}`,
      body: callbackBody(t.upstreamId)
    }))
    const spec = {
      mode: 'closed' as const,
      connections: CONNECTIONS,
      warmupMs: WARMUP_MS,
      warmupMaxRequests: TASKS * PER_TASK_WARMUP,
      durationMs: DURATION_MS,
      maxRequests: TASKS * PER_TASK_MEASURED,
      headers: {},
      requests
    }
    const s0 = await commandStats(redis.url)
    const ours = await runLoad({
      ...spec,
      origin: gw.origin,
      watchPids: { gateway: gw.pid, redis: redis.pid, runner: process.pid }
    }, 60_000)
    const s1 = await commandStats(redis.url)
    await gw.stop()
    const warnings = gatewayWarnings(gw)
    const floor = await startFloor(redis.url)
    const base = await runLoad({
      ...spec,
      warmupMaxRequests: 200_000,
      maxRequests: 500_000,
      origin: floor.origin,
      watchPids: { floor: floor.pid, redis: redis.pid, runner: process.pid }
    }, 60_000)
    const s2 = await commandStats(redis.url)
    await floor.stop()

    const m = ours.measured
    const f = base.measured
    const bad = m.requests - okCount(m) + m.errors
    return [
      row({
        bench: 'callback',
        metric: `req/s (c=${CONNECTIONS}, duplicates)`,
        unit: 'req/s',
        ours: m.rps,
        floor: f.rps,
        target: { text: '≥ 0.5× floor and ≥ 10,000 req/s', met: x => x >= 0.5 * f.rps && x >= 10_000 && bad === 0 },
        others_share: Math.max(cpuShares(m).others_share ?? 0, cpuShares(f).others_share ?? 0),
        details: {
          ours: phaseDetails(ours, CONNECTIONS),
          floor: phaseDetails(base, CONNECTIONS),
          redis_per_request: {
            ours: perRequest(s0, s1, ours.warmup.requests + ours.measured.requests),
            floor: perRequest(s1, s2, base.warmup.requests + base.measured.requests)
          },
          tasks: TASKS,
          body_bytes: requests[0].body?.length,
          gateway_log_warnings: warnings
        }
      }),
      row({ bench: 'callback', metric: 'latency p50', unit: 'ms', ours: m.latencyMs.p50, floor: f.latencyMs.p50 }),
      row({
        bench: 'callback',
        metric: 'latency p99',
        unit: 'ms',
        ours: m.latencyMs.p99,
        floor: f.latencyMs.p99,
        target: { text: '≤ 2× floor', met: x => x <= 2 * f.latencyMs.p99 }
      }),
      row({
        bench: 'callback',
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
