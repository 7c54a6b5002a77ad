/**
 * webhook (issue 15): callback 2xx → webhook received, at 100 task transitions/s with 3 endpoints each.
 *
 * Setup (not measured): the gateway, redis-server and the simulator; TASKS small tasks created and `submitted`; the
 * `webhooks` group caught up; then 3 endpoints registered (every event type), each a loopback receiver in a child
 * process (bench/webhook-receiver.ts) that records when each `webhook-id` arrived. Run: the bench posts CometAPI
 * callbacks (the simulator's own body for the task, to the task's own callback_url with its token) open-loop at
 * RATE per second: each task `processing`, and LAG tasks later `succeed` (the simulator's task is moved to `succeed`
 * first, so the gateway's confirming query finds it). Per transition and endpoint: the time from the callback's
 * 2xx to the webhook's arrival (the same wall clock in both processes), p50/p99 over all that arrived, and the share
 * that arrived during the run and a drain of at most DRAIN_MS. The first WARMUP tasks are sent first and not
 * counted (JIT, pools and workers warm up over the first seconds). Floor (bench/webhook-floor.ts): bare Fastify
 * doing one XADD per callback and a reader that XREADGROUPs and POSTs the 3 webhooks signed with standardwebhooks,
 * against fresh receivers and the same Redis, same schedule. Target: p99 < 50 ms, every webhook delivered. The
 * details say where the time went (callback 2xx → first attempt, and the attempt, from the delivery records) and
 * what else used the machine (others_share). BENCH_WEBHOOK_DUMP=<path> writes each run's sends and receipts to
 * <path>.ours.json and <path>.floor.json, to see when in the run the time went.
 */
import { join } from 'node:path'
import { Pool, request } from 'undici'
import type { Simulator } from '../../simulator/app.ts'
import { row, type Row } from '../lib/report.ts'
import {
  gatewayWarnings, makeSubmittedTasks, startGateway, startRedis, startSimulator, tmp, type Gateway
} from '../lib/stack.ts'
import { cpuMsOf, machineBusyMs, startNode, waitHttpOk, type NodeChild } from '../lib/proc.ts'
import { keys } from '../../src/store/keys.ts'
import { cpus } from 'node:os'
import { freePort } from '../../src/infra/embedded-redis.ts'
import { commandStats, perRequest, type CommandStats } from '../lib/redis-stats.ts'
import { round, summarize } from '../lib/stats.ts'
import { Redis } from 'ioredis'

const TASKS = 750
const WARMUP = 200
const RATE = 100
/** A task's `succeed` is sent this many tasks after its `processing` (2 s at 100 transitions/s, half of them each). */
const LAG = 100
const DRAIN_MS = 10_000
const ENDPOINTS = 3
const TYPES = { processing: 'video.processing', succeed: 'video.succeeded' } as const

const now = () => performance.timeOrigin + performance.now()
const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

interface Transition { taskId: string, upstreamId: string, path: string, status: 'processing' | 'succeed' }
interface Sent { t: Transition, status: number | null, at: number }

/** processing of task i, and succeed of task i - LAG, interleaved: both kinds all along the run. */
export function schedule (tasks: Array<Omit<Transition, 'status'>>): Transition[] {
  const out: Transition[] = []
  for (let i = 0; i < tasks.length + LAG; i++) {
    if (i < tasks.length) out.push({ ...tasks[i], status: 'processing' })
    if (i >= LAG) out.push({ ...tasks[i - LAG], status: 'succeed' })
  }
  return out
}

/** Posts every transition at RATE per second (open loop: a slow answer does not delay the next one). */
async function send (origin: string, list: Transition[], sim: Simulator | null): Promise<Sent[]> {
  const pool = new Pool(origin, { connections: 32, keepAliveTimeout: 60_000 })
  const out: Sent[] = []
  const inflight: Array<Promise<void>> = []
  const t0 = now()
  try {
    for (let k = 0; k < list.length; k++) {
      const wait = t0 + k * 1000 / RATE - now()
      if (wait > 1) await sleep(wait)
      const t = list[k]
      const simTask = sim?.tasks.get(t.upstreamId)
      if (simTask !== undefined && sim !== null) {
        simTask.status = t.status
        simTask.updated_at = Date.now()
      }
      const body = sim !== null && simTask !== undefined
        ? sim.json(sim.taskView(simTask))
        : JSON.stringify({ task_id: t.upstreamId, task_status: t.status, task_info: {}, task_result: {} })
      const one: Sent = { t, status: null, at: NaN }
      out.push(one)
      inflight.push(pool.request({
        method: 'POST',
        path: t.path,
        body,
        headers: { 'content-type': 'application/json' },
        headersTimeout: 10_000,
        bodyTimeout: 10_000
      }).then(async res => {
        one.at = now()
        one.status = res.statusCode
        await res.body.dump()
      }).catch(() => {}))
    }
    await Promise.all(inflight)
    return out
  } finally {
    await pool.close()
  }
}

interface Receivers { node: NodeChild, urls: string[], records: () => Promise<RecordsAnswer> }
interface RecordsAnswer { records: Array<[number, string, string, string, number]>, repeats: number, signed: number }

export async function startReceivers (): Promise<Receivers> {
  const node = startNode('webhook-receivers', 'bench/webhook-receiver.ts', { RECEIVERS: String(ENDPOINTS) })
  let ports: number[] | undefined
  for (let i = 0; i < 300 && ports === undefined; i++) {
    const line = node.stdout().split('\n').find(l => l.startsWith('{"ports"'))
    if (line !== undefined) ports = (JSON.parse(line) as { ports: number[] }).ports
    else await sleep(50)
  }
  if (ports === undefined) throw new Error(`receivers did not start:\n${node.output()}`)
  const urls = ports.map(p => `http://127.0.0.1:${p}/hook`)
  const records = async () => {
    const res = await request(`http://127.0.0.1:${(ports as number[])[0]}/_records`)
    return await res.body.json() as RecordsAnswer
  }
  return { node, urls, records }
}

interface Measured {
  latency: ReturnType<typeof summarize>
  expected: number
  delivered: number
  nonOk: number
  sent: number
  durationMs: number
  repeats: number
  cpuMs: Record<string, number | null>
  /** `<task id> <event type>` → when its callback's 2xx arrived. */
  sentAt: Map<string, number>
}

/**
 * Sends warm-up then measured transitions, waits for the webhooks (at most DRAIN_MS after the last 2xx) and matches
 * every (task, type, receiver) to its callback's 2xx.
 */
export async function measure (label: string, origin: string, warm: Transition[], list: Transition[],
  sim: Simulator | null, rx: Receivers, pids: Record<string, number>, onStart: () => Promise<void>): Promise<Measured> {
  await send(origin, warm, sim)
  await sleep(1000)
  await onStart()
  const cpu = (): Record<string, number | null> => ({
    ...Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuMsOf(pid)])),
    machine: machineBusyMs()
  })
  const c0 = cpu()
  const t0 = now()
  const sent = await send(origin, list, sim)
  const ok = sent.filter(s => s.status !== null && s.status >= 200 && s.status < 300)
  const expected = new Map<string, number>()
  for (const s of ok) expected.set(`${s.t.taskId} ${TYPES[s.t.status]}`, s.at)
  const ports = rx.urls.map(u => Number(new URL(u).port))
  const want = expected.size * ports.length
  const drainEnd = now() + DRAIN_MS
  let got: RecordsAnswer = await rx.records()
  const matched = () => got.records.filter(([, , task, type]) => expected.has(`${task} ${type}`)).length
  while (matched() < want && now() < drainEnd) {
    await sleep(200)
    got = await rx.records()
  }
  const durationMs = now() - t0
  const c1 = cpu()
  const latencies: number[] = []
  for (const [, , task, type, at] of got.records) {
    const sentAt = expected.get(`${task} ${type}`)
    if (sentAt !== undefined) latencies.push(at - sentAt)
  }
  if (process.env.BENCH_WEBHOOK_DUMP !== undefined) {
    const { writeFileSync } = await import('node:fs')
    writeFileSync(`${process.env.BENCH_WEBHOOK_DUMP}.${label}.json`, JSON.stringify({ sent, records: got.records }))
  }
  return {
    latency: summarize(latencies),
    expected: want,
    delivered: latencies.length,
    nonOk: sent.length - ok.length,
    sent: sent.length,
    durationMs,
    repeats: got.repeats,
    sentAt: expected,
    cpuMs: Object.fromEntries(Object.keys(c1).map(k =>
      [k, c1[k] === null || c0[k] === null ? null : (c1[k] as number) - (c0[k] as number)]))
  }
}

/** Until the `webhooks` group has handed out and acknowledged every entry (the setup's events, before endpoints). */
async function groupCaughtUp (redisUrl: string, timeoutMs = 60_000): Promise<void> {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
  try {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      const groups = await redis.xinfo('GROUPS', '{kg}:events') as Array<Array<string | number>>
      const g = groups.map(flat => Object.fromEntries(
        Array.from({ length: flat.length / 2 }, (_, i) => [flat[2 * i], flat[2 * i + 1]])))
        .find(x => x.name === 'webhooks')
      if (g !== undefined && Number(g.pending) === 0 && Number(g.lag) === 0) return
      await sleep(200)
    }
    throw new Error('the webhooks group did not catch up with the setup\'s events')
  } finally {
    redis.disconnect()
  }
}

async function addEndpoints (gw: Gateway, urls: string[]): Promise<void> {
  for (const url of urls) {
    const res = await request(`${gw.origin}/v1/webhook-endpoints`, {
      method: 'POST',
      headers: { authorization: `Bearer ${gw.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ url, description: 'bench receiver' })
    })
    const text = await res.body.text()
    if (res.statusCode !== 201) throw new Error(`endpoint registration answered ${res.statusCode}: ${text}`)
  }
}

/** Share of the machine's CPU that processes outside the bench used during the run (noise above a few %). */
function othersShare (m: Measured): number | null {
  const parts = Object.entries(m.cpuMs).filter(([k]) => k !== 'machine').map(([, v]) => v)
  if (m.cpuMs.machine === null || parts.includes(null)) return null
  const others = (m.cpuMs.machine as number) - parts.reduce((a: number, v) => a + (v as number), 0)
  return round(Math.max(0, others) / (m.durationMs * cpus().length), 2)
}

/**
 * Where a webhook's time went, from the gateway's own delivery records: callback 2xx → first attempt started (the
 * event pipeline: transition, confirm, stream, fan-out, storing the delivery), and its duration (the POST).
 */
async function attemptTimes (redisUrl: string, m: Measured): Promise<Record<string, unknown>> {
  const k = keys('kg')
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
  try {
    const ids = await redis.zrange(k.deliveries('all'), '0', '-1')
    const toStart: number[] = []
    const took: number[] = []
    let queued = 0
    for (let i = 0; i < ids.length; i += 500) {
      const batch = ids.slice(i, i + 500)
      const p = redis.pipeline()
      for (const id of batch) p.hmget(k.delivery(id), 'task_id', 'type').lindex(k.deliveryAttempts(id), 0)
      const res = await p.exec() ?? []
      for (let j = 0; j < batch.length; j++) {
        const [taskId, type] = res[2 * j][1] as [string, string]
        const first = res[2 * j + 1][1] as string | null
        const sentAt = m.sentAt.get(`${taskId} ${type}`)
        if (sentAt === undefined || first === null) continue
        const a = JSON.parse(first) as { at: string, duration_ms: number }
        toStart.push(Date.parse(a.at) - sentAt)
        took.push(a.duration_ms)
        if (a.duration_ms > 1000) queued++
      }
    }
    const s = summarize(toStart)
    const t = summarize(took)
    return {
      to_first_attempt_ms: { p50: round(s.p50), p99: round(s.p99), max: round(s.max) },
      first_attempt_duration_ms: { p50: round(t.p50), p99: round(t.p99), max: round(t.max) },
      first_attempts_over_1s: queued
    }
  } finally {
    redis.disconnect()
  }
}

function perTransition (m: Measured, s0: CommandStats, s1: CommandStats): Record<string, unknown> {
  return {
    others_share: othersShare(m),
    transitions: m.sent,
    webhooks_expected: m.expected,
    webhooks_delivered: m.delivered,
    repeats: m.repeats,
    callbacks_not_2xx: m.nonOk,
    latency_ms: {
      p50: round(m.latency.p50), p90: round(m.latency.p90), p99: round(m.latency.p99), max: round(m.latency.max)
    },
    duration_ms: Math.round(m.durationMs),
    cpu_us_per_transition: Object.fromEntries(Object.entries(m.cpuMs).filter(([k]) => k !== 'machine').map(([k, v]) =>
      [k, v === null ? null : round(v * 1000 / Math.max(1, m.sent), 1)])),
    redis_per_transition: perRequest(s0, s1, m.sent)
  }
}

export async function webhook (): Promise<Row[]> {
  const dir = tmp('webhook')
  const stops: Array<() => Promise<void>> = []
  try {
    const redis = await startRedis(join(dir.path, 'redis'))
    stops.unshift(redis.stop)
    const { sim, url: simUrl, stop: simStop } = await startSimulator()
    stops.unshift(simStop)
    const gw = await startGateway({
      redisUrl: redis.url,
      simUrl,
      dataDir: join(dir.path, 'gateway'),
      // Receivers and the simulator's videos are on loopback: allowed, as in a local deployment.
      env: { WEBHOOK_ALLOW_PRIVATE: 'true', MIRROR_ALLOW_PRIVATE: 'true' }
    })
    const made = await makeSubmittedTasks(gw, TASKS + WARMUP, 120_000)
    const tasks = made.map(t => {
      const cb = sim.tasks.get(t.upstreamId)?.callback_url
      if (cb === undefined || cb === null) throw new Error(`simulator has no callback_url for ${t.upstreamId}`)
      const u = new URL(cb)
      return { taskId: t.id, upstreamId: t.upstreamId, path: `${u.pathname}${u.search}` }
    })
    const warm = schedule(tasks.slice(0, WARMUP))
    const list = schedule(tasks.slice(WARMUP))
    await groupCaughtUp(redis.url)
    const rx = await startReceivers()
    await addEndpoints(gw, rx.urls)
    let s0: CommandStats = {}
    const ours = await measure('ours', gw.origin, warm, list, sim, rx,
      { gateway: gw.pid, redis: redis.pid, runner: process.pid, receivers: rx.node.pid },
      async () => { s0 = await commandStats(redis.url) })
    const s1 = await commandStats(redis.url)
    const stages = await attemptTimes(redis.url, ours)
    await gw.stop()
    await rx.node.stop()
    const warnings = gatewayWarnings(gw)

    const frx = await startReceivers()
    const port = await freePort()
    const floorNode = startNode('webhook-floor', 'bench/webhook-floor.ts', {
      PORT: String(port), REDIS_URL: redis.url, WEBHOOK_URLS: frx.urls.join(',')
    })
    const floorOrigin = `http://127.0.0.1:${port}`
    await waitHttpOk(`${floorOrigin}/health/live`, floorNode.child, floorNode.output)
    let f0: CommandStats = {}
    const base = await measure('floor', floorOrigin, warm, list, null, frx,
      { floor: floorNode.pid, redis: redis.pid, runner: process.pid, receivers: frx.node.pid },
      async () => { f0 = await commandStats(redis.url) })
    const f1 = await commandStats(redis.url)
    await floorNode.stop()
    await frx.node.stop()

    const share = (m: Measured) => m.expected === 0 ? 0 : m.delivered / m.expected
    const details = {
      rate_per_s: RATE,
      endpoints: ENDPOINTS,
      tasks: TASKS,
      ours: { ...perTransition(ours, s0, s1), stages },
      floor: perTransition(base, f0, f1),
      gateway_log_warnings: warnings
    }
    const metric = `callback 2xx → webhook received (${RATE} transitions/s × ${ENDPOINTS})`
    return [
      row({
        bench: 'webhook',
        metric: `${metric}, p50`,
        unit: 'ms',
        ours: ours.latency.p50,
        floor: base.latency.p50,
        details
      }),
      row({
        bench: 'webhook',
        metric: `${metric}, p99`,
        unit: 'ms',
        ours: ours.latency.p99,
        floor: base.latency.p99,
        target: { text: '< 50 ms', met: x => x < 50 && share(ours) === 1 },
        others_share: Math.max(othersShare(ours) ?? 0, othersShare(base) ?? 0)
      }),
      row({
        bench: 'webhook',
        metric: `delivered within the run + ${DRAIN_MS / 1000} s`,
        unit: '',
        ours: share(ours),
        floor: share(base),
        target: { text: '= 1', met: x => x === 1 }
      }),
      row({
        bench: 'webhook',
        metric: 'callbacks not 2xx',
        unit: '',
        ours: ours.nonOk,
        floor: base.nonOk,
        target: { text: '= 0', met: x => x === 0 }
      })
    ]
  } finally {
    for (const stop of stops) await stop().catch(() => {})
    dir.remove()
  }
}
