/**
 * lifecycle (issue 15, "Redis work per task lifecycle at most half of today's"): what one task costs Redis from
 * create to done. 200 small tasks (image URLs, nothing parked) go through the whole life: create → submit →
 * `processing` callback → `succeeded` callback → result copy → `video.stored`, with one webhook endpoint (a
 * loopback receiver here) getting every event. Measured: Redis commands (INFO commandstats), Redis CPU
 * (used_cpu_sys + used_cpu_user) and the gateway's round trips (`kg_redis_round_trips_total`) from the first create
 * to the last webhook, minus an idle period of the same length right after (BullMQ workers, the event readers and
 * the sweeps poll when there is nothing to do), divided by the number of tasks.
 * There is no bare-Fastify floor for a whole lifecycle: the reference is main's figures before the cut
 * (BASELINE, measured with this bench), and the target is at most half of them.
 */
import { createServer, type Server } from 'node:http'
import { cpus } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { row, type Row } from '../lib/report.ts'
import { createSmallTasks, gatewayWarnings, startGateway, startRedis, tmp } from '../lib/stack.ts'
import { commandStats, redisCpuMs, type CommandStats } from '../lib/redis-stats.ts'
import { cpuMsOf, machineBusyMs, track } from '../lib/proc.ts'
import { round } from '../lib/stats.ts'
import { Simulator } from '../../simulator/app.ts'

const TASKS = 200
const CREATE_CONCURRENCY = 8
/** Events a task's life makes: queued, submitted, processing, succeeded, stored; each is one webhook here. */
const EVENTS_PER_TASK = 5
const RUN_TIMEOUT_MS = 90_000
const MAX_IDLE_MS = 60_000

/** Main's figures per lifecycle before the cut (this bench on main at 1bf241c, 2 cores); the target is half. */
const BASELINE = { commands: 748, roundTrips: 94.8, redisCpuMs: 11.5 }

/** A webhook receiver on loopback that answers 200 and remembers which events arrived for which task. */
interface Receiver { url: string, received: () => number, stored: Set<string>, stop: () => Promise<void> }

async function startReceiver (): Promise<Receiver> {
  const stored = new Set<string>()
  let received = 0
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      received++
      try {
        const event = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { type?: string, data?: { id?: string } }
        if (event.type === 'video.stored' && typeof event.data?.id === 'string') stored.add(event.data.id)
      } catch {}
      res.writeHead(200).end()
    })
  })
  server.keepAliveTimeout = 30_000
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  const stop = track('webhook receiver', undefined, async () => {
    server.closeAllConnections()
    await new Promise<void>(resolve => server.close(() => resolve()))
  })
  return { url: `http://127.0.0.1:${port}/hook`, received: () => received, stored, stop }
}

/** The gateway's round trips so far, all connections, from its /metrics. */
async function gatewayTrips (pool: Pool): Promise<number> {
  const res = await pool.request({ method: 'GET', path: '/metrics' })
  const text = await res.body.text()
  let n = 0
  for (const m of text.matchAll(/^kg_redis_round_trips_total\{connection="[^"]+"\} (\d+)/gm)) n += Number(m[1])
  return n
}

interface Snapshot {
  at: number
  stats: CommandStats
  cpuMs: number
  trips: number
  gatewayCpuMs: number | null
  /** CPU of the whole machine, and of the processes of this benchmark (gateway, redis-server, this one). */
  machineMs: number | null
  oursMs: number | null
}

async function snapshot (redisUrl: string, redisPid: number, pool: Pool, gatewayPid: number): Promise<Snapshot> {
  const trips = await gatewayTrips(pool)
  const pids = [gatewayPid, redisPid, process.pid].map(cpuMsOf)
  return {
    at: Date.now(),
    stats: await commandStats(redisUrl),
    cpuMs: await redisCpuMs(redisUrl),
    trips,
    gatewayCpuMs: pids[0],
    machineMs: machineBusyMs(),
    oursMs: pids.some(p => p === null) ? null : (pids as number[]).reduce((a, b) => a + b, 0)
  }
}

/** The share of the machine's CPU that processes outside the benchmark used between two snapshots (0..1). */
function othersShare (a: Snapshot, b: Snapshot): number | null {
  if (a.machineMs === null || b.machineMs === null || a.oursMs === null || b.oursMs === null) return null
  const others = (b.machineMs - a.machineMs) - (b.oursMs - a.oursMs)
  return round(Math.max(0, others) / ((b.at - a.at) * cpus().length), 2)
}

/** Calls per command between two snapshots, leaving out the bench's own INFO. */
function callsBetween (a: CommandStats, b: CommandStats): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [cmd, s] of Object.entries(b)) {
    if (cmd === 'info') continue
    const n = s.calls - (a[cmd]?.calls ?? 0)
    if (n > 0) out[cmd] = n
  }
  return out
}

const sum = (r: Record<string, number>) => Object.values(r).reduce((x, y) => x + y, 0)

export async function lifecycle (): Promise<Row[]> {
  const dir = tmp('lifecycle')
  const stops: Array<() => Promise<void>> = []
  try {
    const redis = await startRedis(join(dir.path, 'redis'))
    stops.unshift(redis.stop)
    // Callbacks as Kling sends them: `processing` soon after the create, the result a little later.
    const sim = new Simulator({ auto: true, processingAfterMs: 200, finishAfterMs: 600 })
    const simUrl = await sim.listen(0, '127.0.0.1')
    stops.unshift(track('simulator', undefined, async () => await sim.close()))
    const receiver = await startReceiver()
    stops.unshift(receiver.stop)
    const gw = await startGateway({
      redisUrl: redis.url,
      simUrl,
      dataDir: join(dir.path, 'gateway'),
      // The receiver and the simulator's result videos are on loopback.
      env: { WEBHOOK_ALLOW_PRIVATE: 'true', MIRROR_ALLOW_PRIVATE: 'true' }
    })
    stops.unshift(gw.stop)
    const pool = new Pool(gw.origin, { connections: CREATE_CONCURRENCY + 2 })
    stops.unshift(async () => { await pool.close() })
    const headers = { authorization: `Bearer ${gw.apiKey}`, 'content-type': 'application/json' }
    const ep = await pool.request({
      method: 'POST', path: '/v1/webhook-endpoints', headers, body: JSON.stringify({ url: receiver.url })
    })
    if (ep.statusCode !== 201) throw new Error(`webhook endpoint answered ${ep.statusCode}: ${await ep.body.text()}`)
    await ep.body.dump()
    // Let start-up work (repeatable jobs, consumer groups) finish before measuring.
    await new Promise(resolve => setTimeout(resolve, 1000))

    const s0 = await snapshot(redis.url, redis.pid, pool, gw.pid)
    await createSmallTasks(pool, gw.apiKey, TASKS, { concurrency: CREATE_CONCURRENCY, prompt: 'benchmark lifecycle' })
    const deadline = Date.now() + RUN_TIMEOUT_MS
    while ((receiver.stored.size < TASKS || receiver.received() < TASKS * EVENTS_PER_TASK) && Date.now() < deadline) {
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    if (receiver.stored.size < TASKS) {
      throw new Error(`${receiver.stored.size} of ${TASKS} tasks reached video.stored within ${RUN_TIMEOUT_MS} ms`)
    }
    const s1 = await snapshot(redis.url, redis.pid, pool, gw.pid)
    const runMs = s1.at - s0.at
    const idleMs = Math.min(runMs, MAX_IDLE_MS)
    await new Promise(resolve => setTimeout(resolve, idleMs))
    const s2 = await snapshot(redis.url, redis.pid, pool, gw.pid)
    const warnings = gatewayWarnings(gw)

    // The idle period's work, scaled to the run's length, is what the gateway does with no tasks at all.
    const scale = runMs / Math.max(1, s2.at - s1.at)
    const run = callsBetween(s0.stats, s1.stats)
    const idle = callsBetween(s1.stats, s2.stats)
    const byCommand: Array<[string, number]> = Object.keys(run)
      .map(cmd => [cmd, round(((run[cmd] ?? 0) - (idle[cmd] ?? 0) * scale) / TASKS, 2)] as [string, number])
      .filter(([, n]) => Math.abs(n) >= 0.05)
      .sort((a, b) => b[1] - a[1])
    const commands = (sum(run) - sum(idle) * scale) / TASKS
    const cpuMs = ((s1.cpuMs - s0.cpuMs) - (s2.cpuMs - s1.cpuMs) * scale) / TASKS
    const trips = ((s1.trips - s0.trips) - (s2.trips - s1.trips) * scale) / TASKS
    const gwCpu = s0.gatewayCpuMs === null || s1.gatewayCpuMs === null || s2.gatewayCpuMs === null
      ? null
      : ((s1.gatewayCpuMs - s0.gatewayCpuMs) - (s2.gatewayCpuMs - s1.gatewayCpuMs) * scale) / TASKS
    const ratio = (x: number, base: number) => base > 0 ? `${round(x / base, 2)}×` : 'no baseline'
    const note = `per lifecycle: ${round(commands, 1)} commands (${ratio(commands, BASELINE.commands)} of main's ` +
      `${BASELINE.commands}), ${round(trips, 1)} round trips (${ratio(trips, BASELINE.roundTrips)} of ` +
      `${BASELINE.roundTrips}), ${round(cpuMs, 2)} ms Redis CPU (${ratio(cpuMs, BASELINE.redisCpuMs)} of ` +
      `${BASELINE.redisCpuMs})`
    const details = {
      note,
      baseline_main: BASELINE,
      tasks: TASKS,
      webhook_endpoints: 1,
      webhooks_received: receiver.received(),
      run_ms: runMs,
      idle_ms: s2.at - s1.at,
      idle_per_s: {
        commands: round(sum(idle) / ((s2.at - s1.at) / 1000), 1),
        round_trips: round((s2.trips - s1.trips) / ((s2.at - s1.at) / 1000), 1),
        redis_cpu_ms: round((s2.cpuMs - s1.cpuMs) / ((s2.at - s1.at) / 1000), 2)
      },
      commands_per_lifecycle: Object.fromEntries(byCommand),
      cpu_ms_per_lifecycle: { redis: round(cpuMs, 3), gateway: gwCpu === null ? null : round(gwCpu, 3) },
      upstream_creates: sim.counts.creates,
      gateway_log_warnings: warnings
    }
    const others = Math.max(othersShare(s0, s1) ?? 0, othersShare(s1, s2) ?? 0)
    const half = (base: number) => base > 0 ? `≤ ${round(base / 2, 1)} (half of main's ${base})` : '≤ half of main'
    const met = (base: number) => (x: number) => base > 0 && x <= base / 2
    return [
      row({
        bench: 'lifecycle',
        metric: 'Redis commands / task lifecycle',
        unit: '',
        ours: commands,
        floor: null,
        target: { text: half(BASELINE.commands), met: met(BASELINE.commands) },
        others_share: others,
        details
      }),
      row({
        bench: 'lifecycle',
        metric: 'Redis round trips / task lifecycle',
        unit: '',
        ours: trips,
        floor: null,
        target: { text: half(BASELINE.roundTrips), met: met(BASELINE.roundTrips) },
        others_share: others,
        details: { note }
      }),
      row({
        bench: 'lifecycle',
        metric: 'Redis CPU / task lifecycle',
        unit: 'ms',
        ours: cpuMs,
        floor: null,
        target: { text: half(BASELINE.redisCpuMs), met: met(BASELINE.redisCpuMs) },
        others_share: others,
        details: { note }
      })
    ]
  } finally {
    for (const stop of stops) await stop().catch(() => {})
    dir.remove()
  }
}
