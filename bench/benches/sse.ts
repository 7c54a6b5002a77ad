/**
 * sse (issue 15): 2,000 concurrent SSE streams on one replica (200 `submitted` tasks, 10 streams each, opened by a
 * separate client process over one undici pool), then every task moved twice through the simulator's own
 * callbacks at a steady pace: `processing` (applied by the callback), then `failed` (confirmed with the simulator
 * first, then applied), the task's last event, after which the gateway ends its streams. The heartbeat is the
 * production default (15 s), so one round of it falls inside the transitions.
 *
 * - delivery latency: from the transition's commit (the ms of its `{kg}:events` entry id, Redis's clock on this
 *   machine) to the frame's arrival on each of the task's 10 streams; p50/p99 over every (event, stream), and the
 *   share delivered at all.
 * - memory: the gateway's RSS before the streams open (after 5 s of quiet) and with all open (5 s after), each
 *   the median of 5 samples, the difference divided by the streams open.
 * - floor: bench/floor-sse.ts, a bare Fastify process holding the same 2,000 streams fed by one XREAD tail of the
 *   same Redis stream; the bench appends the same entries again at the same pace (same frame bytes per event).
 *   Its garbage is collected before each RSS sample (a fresh process's heap shrinks under a "before" figure);
 *   the gateway's is not, so its figure errs high.
 * Targets: ≤ 32 KB RSS per stream, every event delivered, p99 < 250 ms.
 */
import { join } from 'node:path'
import { writeFileSync } from 'node:fs'
import { Redis } from 'ioredis'
import { request } from 'undici'
import { row, type Row } from '../lib/report.ts'
import { cpuMsOf, machineBusyMs, memoryOf, startNode, waitExit, waitHttpOk, type NodeChild } from '../lib/proc.ts'
import { freePort } from '../../src/infra/embedded-redis.ts'
import { gatewayWarnings, makeSubmittedTasks, startGateway, startRedis, startSimulator, tmp } from '../lib/stack.ts'
import { commandStats, perRequest } from '../lib/redis-stats.ts'
import { round, summarize } from '../lib/stats.ts'
import { cpus } from 'node:os'
import type { SseResult, SseSpec } from '../sse-clients.ts'

const TASKS = 200
const PER_TASK = 10
/** Transitions per second, all tasks together. */
const PACE = 20
const SETTLE_MS = 5000
/** Before the "before" RSS: a fresh process's startup garbage is collected and its heap shrinks in this time. */
const QUIET_MS = 5000
const HEARTBEAT_MS = 15_000
const STREAM_KEY = '{kg}:events'

const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

/** Median of a few RSS samples of `pid`, in bytes (one sample can catch a GC or an allocation burst). */
async function rssOf (pid: number): Promise<number> {
  const samples: number[] = []
  for (let i = 0; i < 5; i++) {
    samples.push(memoryOf(pid)?.rss ?? NaN)
    await sleep(200)
  }
  return samples.sort((a, b) => a - b)[2]
}

/** CPU ms of each process so far, and of the whole machine (busy), to take differences of. */
function cpuNow (pids: Record<string, number>): Record<string, number | null> {
  const out: Record<string, number | null> = { machine: machineBusyMs() }
  for (const [name, pid] of Object.entries(pids)) out[name] = cpuMsOf(pid)
  return out
}

/**
 * CPU ms each process used between two snapshots, `others`: what the rest of the machine (not this benchmark)
 * used, and its share of the machine's capacity over `ms` (above a few % the numbers are noisy).
 */
function cpuSpent (a: Record<string, number | null>, b: Record<string, number | null>, ms: number,
  clients: SseResult) {
  const spent: Record<string, number | null> = { clients: clients.cpuMsAfterReady }
  for (const k of Object.keys(b)) spent[k] = a[k] === null || b[k] === null ? null : Math.round(b[k] - a[k])
  const ours = Object.entries(spent).filter(([k]) => k !== 'machine').map(([, v]) => v)
  const others = spent.machine === null || ours.includes(null)
    ? null
    : Math.max(0, spent.machine - ours.reduce((n: number, v) => n + (v as number), 0))
  const share = others === null ? null : round(others / (ms * cpus().length), 2)
  return { cpu_ms: { ...spent, others }, others_share: share }
}

interface Entry { entryId: string, ms: number, eventId: string, taskId: string, fields: string[] }

async function entriesAfter (redis: Redis, after: string): Promise<Entry[]> {
  const raw = await redis.xrange(STREAM_KEY, `(${after}`, '+')
  return raw.map(([entryId, fields]) => {
    const f: Record<string, string> = {}
    for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]] = fields[i + 1]
    return { entryId, ms: Number(entryId.split('-')[0]), eventId: f.id, taskId: f.task_id, fields }
  })
}

async function lastEntryId (redis: Redis): Promise<string> {
  return (await redis.xrevrange(STREAM_KEY, '+', '-', 'COUNT', 1))[0]?.[0] ?? '0-0'
}

/** Starts the client process; resolves once every stream has its answer (the `READY` line). */
async function openStreams (dir: string, spec: SseSpec): Promise<NodeChild> {
  const file = join(dir, `spec-${Date.now()}.json`)
  writeFileSync(file, JSON.stringify(spec))
  const node = startNode('sse-clients', 'bench/sse-clients.ts', {}, [file])
  const deadline = Date.now() + 60_000
  while (!node.stdout().includes('READY ')) {
    if (node.child.exitCode !== null || Date.now() > deadline) {
      await node.stop()
      throw new Error(`SSE clients did not get ready:\n${node.output()}`)
    }
    await sleep(50)
  }
  return node
}

async function clientResult (node: NodeChild, timeoutMs: number): Promise<SseResult> {
  const code = await waitExit(node.child, timeoutMs)
  await node.stop()
  const line = node.stdout().trim().split('\n').at(-1) ?? ''
  if (code !== 0 || !line.startsWith('{')) throw new Error(`SSE clients failed (exit ${code}):\n${node.output()}`)
  return JSON.parse(line) as SseResult
}

/** Latency of every (event, stream of its task) from the entry's commit to the frame's arrival; misses counted. */
function deliveries (entries: Entry[], paths: string[], taskOf: string[], result: SseResult) {
  const streamsOf = new Map<string, number[]>()
  taskOf.forEach((t, i) => { streamsOf.set(t, [...streamsOf.get(t) ?? [], i]) })
  const latencies: number[] = []
  let expected = 0
  for (const e of entries) {
    for (const i of streamsOf.get(e.taskId) ?? []) {
      expected++
      const got = result.streams[i]?.frames.find(([id]) => id === e.eventId)
      if (got !== undefined) latencies.push(Math.max(0, got[1] - e.ms))
    }
  }
  return { expected, delivered: latencies.length, latency: summarize(latencies), paths: paths.length }
}

function phase (r: ReturnType<typeof deliveries>, client: SseResult, rssBefore: number, rssOpen: number) {
  return {
    streams_open: client.opened,
    open_statuses: client.statuses,
    open_ms: client.openMs,
    client_errors: client.errors,
    client_error_samples: client.errorSamples,
    rss_before_mb: round(rssBefore / 2 ** 20, 1),
    rss_open_mb: round(rssOpen / 2 ** 20, 1),
    kb_per_stream: round((rssOpen - rssBefore) / 1024 / Math.max(1, client.opened), 1),
    deliveries_expected: r.expected,
    deliveries: r.delivered,
    latency_ms: {
      p50: round(r.latency.p50),
      p90: round(r.latency.p90),
      p99: round(r.latency.p99),
      max: round(r.latency.max)
    }
  }
}

export async function sse (): Promise<Row[]> {
  const dir = tmp('sse')
  const stops: Array<() => Promise<void>> = []
  const admin = { redis: undefined as Redis | undefined }
  try {
    const redis = await startRedis(join(dir.path, 'redis'))
    stops.unshift(redis.stop)
    admin.redis = new Redis(redis.url, { maxRetriesPerRequest: 1 })
    // A (re)connect that times out on a loaded machine is retried by ioredis; said, not thrown as unhandled.
    admin.redis.on('error', (err: Error) => { process.stderr.write(`[bench] sse: redis client: ${err.message}\n`) })
    const sim = await startSimulator()
    stops.unshift(sim.stop)
    const gw = await startGateway({
      redisUrl: redis.url,
      simUrl: sim.url,
      dataDir: join(dir.path, 'gateway'),
      // One caller holds all 2,000 streams: its per-caller cap would measure itself, not the streams.
      env: { CALLER_MAX_SSE_STREAMS: '0', SSE_HEARTBEAT_MS: String(HEARTBEAT_MS) }
    })
    stops.unshift(gw.stop)
    const tasks = await makeSubmittedTasks(gw, TASKS)
    const taskOf = tasks.flatMap(t => Array<string>(PER_TASK).fill(t.id))
    const paths = taskOf.map(id => `/v1/videos/${id}/events`)
    const spec = (origin: string, headers: Record<string, string>): SseSpec =>
      ({ origin, headers, paths, openConcurrency: 50, deadlineMs: 120_000 })

    // Ours: streams open, settle, then the transitions through the simulator's callbacks.
    await sleep(QUIET_MS)
    const gwBefore = await rssOf(gw.pid)
    const clients = await openStreams(dir.path, spec(gw.origin, { authorization: `Bearer ${gw.apiKey}` }))
    await sleep(SETTLE_MS)
    const gwOpen = await rssOf(gw.pid)
    const start = await lastEntryId(admin.redis)
    const s0 = await commandStats(redis.url)
    const pids = { gateway: gw.pid, redis: redis.pid, runner: process.pid }
    const cpu0 = cpuNow(pids)
    const t0 = Date.now()
    const steps = [
      ...tasks.map(t => () => { sim.sim.setStatus(t.upstreamId, 'processing') }),
      ...tasks.map(t => () => { sim.sim.setStatus(t.upstreamId, 'failed', 'content risk control') })
    ]
    for (let i = 0; i < steps.length; i++) {
      await sleep(t0 + i * 1000 / PACE - Date.now())
      steps[i]()
    }
    const ours = await clientResult(clients, 60_000)
    const cpuOurs = cpuSpent(cpu0, cpuNow(pids), Date.now() - t0, ours)
    const s1 = await commandStats(redis.url)
    const entries = await entriesAfter(admin.redis, start)
    await gw.stop()
    const warnings = gatewayWarnings(gw)
    const mine = phase(deliveries(entries, paths, taskOf, ours), ours, gwBefore, gwOpen)

    // The floor: the same streams, fed by the same entries appended again at the same pace.
    const port = await freePort()
    const floor = startNode('floor-sse', 'bench/floor-sse.ts', {
      PORT: String(port), REDIS_URL: redis.url, REDIS_PREFIX: 'kg', HEARTBEAT_MS: String(HEARTBEAT_MS)
    }, [], ['--expose-gc'])
    stops.unshift(floor.stop)
    const floorOrigin = `http://127.0.0.1:${port}`
    await waitHttpOk(`${floorOrigin}/health/live`, floor.child, floor.output)
    const collect = async () => { await (await request(`${floorOrigin}/gc`, { method: 'POST' })).body.dump() }
    await sleep(QUIET_MS)
    await collect()
    const floorBefore = await rssOf(floor.pid)
    const floorClients = await openStreams(dir.path, spec(floorOrigin, {}))
    await sleep(SETTLE_MS)
    await collect()
    const floorOpen = await rssOf(floor.pid)
    const floorStart = await lastEntryId(admin.redis)
    const floorPids = { floor: floor.pid, redis: redis.pid, runner: process.pid }
    const fcpu0 = cpuNow(floorPids)
    const f0 = Date.now()
    for (let i = 0; i < entries.length; i++) {
      await sleep(f0 + i * 1000 / PACE - Date.now())
      await admin.redis.xadd(STREAM_KEY, '*', ...entries[i].fields)
    }
    const base = await clientResult(floorClients, 60_000)
    const cpuFloor = cpuSpent(fcpu0, cpuNow(floorPids), Date.now() - f0, base)
    await floor.stop()
    const theirs = phase(deliveries(await entriesAfter(admin.redis, floorStart), paths, taskOf, base), base,
      floorBefore, floorOpen)

    const share = (p: typeof mine) => p.deliveries / Math.max(1, p.deliveries_expected)
    const transitions = entries.length
    const others = Math.max(cpuOurs.others_share ?? 0, cpuFloor.others_share ?? 0)
    return [
      row({
        bench: 'sse',
        metric: `RSS per open stream (${mine.streams_open} streams)`,
        unit: 'KB',
        ours: mine.kb_per_stream,
        floor: theirs.kb_per_stream,
        target: { text: '≤ 32 KB, 2,000 open', met: x => x <= 32 && mine.streams_open === TASKS * PER_TASK },
        details: {
          ours: mine,
          floor: theirs,
          tasks: TASKS,
          streams_per_task: PER_TASK,
          transitions,
          pace_per_s: PACE,
          heartbeat_ms: HEARTBEAT_MS,
          cpu_during_transitions: { ours: cpuOurs, floor: cpuFloor },
          redis_per_transition: perRequest(s0, s1, transitions),
          gateway_log_warnings: warnings
        }
      }),
      row({
        bench: 'sse',
        metric: 'event delivery p50 (commit → frame)',
        unit: 'ms',
        ours: mine.latency_ms.p50,
        floor: theirs.latency_ms.p50
      }),
      row({
        bench: 'sse',
        metric: 'event delivery p99 (commit → frame)',
        unit: 'ms',
        ours: mine.latency_ms.p99,
        floor: theirs.latency_ms.p99,
        target: { text: '< 250 ms', met: x => x < 250 },
        others_share: others
      }),
      row({
        bench: 'sse',
        metric: `events delivered (of ${mine.deliveries_expected})`,
        unit: '%',
        ours: round(100 * share(mine), 2),
        floor: round(100 * share(theirs), 2),
        target: { text: '= 100 %', met: x => x === 100 && mine.deliveries_expected > 0 }
      })
    ]
  } finally {
    admin.redis?.disconnect()
    for (const stop of stops) await stop().catch(() => {})
    dir.remove()
  }
}
