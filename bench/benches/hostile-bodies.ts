/**
 * hostile-bodies (GitHub issue 13, item 1): the worst bodies POST /v1/videos accepts to read, sent one after the
 * other at a steady rate, while a separate process asks for /health/live every 20 ms. Two figures:
 *
 * - the longest the server's event loop was blocked while it handled each body (perf_hooks
 *   monitorEventLoopDelay in the server process, bench/lib/loop-probe.mjs, reset before each body and read after
 *   its answer), against the floor's for the same body: bare Fastify that parses the JSON and does one SET. What
 *   the gateway adds beyond the parse is ours − floor; the goal is < 50 ms.
 * - `/health/live` p99 while the bodies arrive, measured from its scheduled time (goal < 10 ms).
 */
import { join } from 'node:path'
import { request } from 'undici'
import { freePort } from '../../src/infra/embedded-redis.ts'
import { startNode, waitExit } from '../lib/proc.ts'
import { row, type Row } from '../lib/report.ts'
import { startFloor, startGateway, startRedis, startSimulator, tmp } from '../lib/stack.ts'
import { round, summarize, type LatencySummary } from '../lib/stats.ts'

const ROUNDS = 5
/** A first round per target, not counted: its JIT warm-up is not what a body costs. */
const WARMUP_ROUNDS = 1
/** One body every GAP_MS (or as soon as the previous is answered, when it takes longer). */
const GAP_MS = 300
const PROBE_INTERVAL_MS = 20
const MB = 1024 * 1024
const URL_A = 'https://images.example.com/bench/a.png'
const VALID = `"image_list":[{"image":"${URL_A}"},{"image":"${URL_A}"}],"prompt":"p"`

/** The bodies, by name: each is as large or as awkward as the route will read. */
function bodies (): Array<{ name: string, body: string }> {
  const longName = (i: number) => `unknown_${String(i).padStart(6, '0')}_${'n'.repeat(90)}`
  return [
    { name: 'valid (control)', body: `{${VALID}}` },
    {
      name: 'image_list of 50,000 items (1 MB)',
      body: '{"image_list":[' + '{"image":"abcdefgh"},'.repeat(49_999) +
      '{"image":"abcdefgh"}],"prompt":"p"}'
    },
    {
      name: 'metadata 5,000 deep',
      body: `{${VALID},"metadata":` + '{"a":'.repeat(5000) + '1' + '}'.repeat(5000) + '}'
    },
    {
      name: '10,000 unknown properties, 100-char names (1 MB)',
      body: `{${VALID},` + Array.from({ length: 10_000 }, (_, i) => `"${longName(i)}":1`).join(',') + '}'
    },
    {
      name: 'prompt of 150,000 lone surrogates (0.9 MB)',
      body: `{${VALID.replace('"p"', '"' + '\\ud800'.repeat(150_000) + '"')}}`
    },
    {
      name: 'metadata array of 5,000,000 items (10 MB)',
      body: `{${VALID},"metadata":{"a":[` + '1,'.repeat(4_999_999) + '1]}}'
    },
    { name: '61 MB prompt (over the 60 MB limit)', body: `{${VALID.replace('"p"', '"' + 'a'.repeat(61 * MB) + '"')}}` }
  ]
}

interface Sent { status: number | null, ms: number, blockMs: number | null, error?: string }

async function probe (port: number, path: '/' | '/reset'): Promise<number | null> {
  const res = await request(`http://127.0.0.1:${port}${path}`)
  return ((await res.body.json()) as { max_ms: number | null }).max_ms
}

/** Sends every body ROUNDS times, paced, with the health prober running beside; bounded by counts and timeouts. */
async function measure (origin: string, probePort: number, headers: Record<string, string>) {
  const list = bodies()
  const prober = startNode('health-probe', 'bench/health-probe.ts', {
    ORIGIN: origin,
    INTERVAL_MS: String(PROBE_INTERVAL_MS),
    DURATION_MS: String((WARMUP_ROUNDS + ROUNDS) * list.length * GAP_MS)
  })
  const sent = new Map<string, Sent[]>(list.map(b => [b.name, []]))
  for (let round = 0; round < WARMUP_ROUNDS + ROUNDS; round++) {
    for (const { name, body } of list) {
      const next = performance.now() + GAP_MS
      await probe(probePort, '/reset')
      const t0 = performance.now()
      let status: number | null = null
      let error: string | undefined
      try {
        const res = await request(`${origin}/v1/videos`, {
          method: 'POST',
          headers: { ...headers, 'content-type': 'application/json' },
          body,
          headersTimeout: 60_000,
          bodyTimeout: 60_000
        })
        status = res.statusCode
        await res.body.text()
      } catch (err) {
        // A server may answer 413 and close before the whole body is written: the sender sees the socket end.
        error = (err as Error).message
      }
      const ms = performance.now() - t0
      const blockMs = await probe(probePort, '/')
      if (round >= WARMUP_ROUNDS) sent.get(name)?.push({ status, ms, blockMs, ...(error !== undefined && { error }) })
      const wait = next - performance.now()
      if (wait > 0) await new Promise(resolve => setTimeout(resolve, wait))
    }
  }
  const code = await waitExit(prober.child, 60_000)
  await prober.stop()
  const line = prober.stdout().trim().split('\n').at(-1) ?? ''
  if (code !== 0 || !line.startsWith('{')) throw new Error(`health prober failed (exit ${code}):\n${prober.output()}`)
  return { sent, health: JSON.parse(line) as LatencySummary & { errors: number } }
}

const maxOf = (xs: Sent[]) => Math.max(...xs.map(s => s.blockMs ?? Infinity))

export async function hostileBodies (): Promise<Row[]> {
  const dir = tmp('hostile-bodies')
  const stops: Array<() => Promise<void>> = []
  const nodeArgs = ['--import', './bench/lib/loop-probe.mjs']
  try {
    const redis = await startRedis(join(dir.path, 'redis'))
    stops.unshift(redis.stop)
    const sim = await startSimulator()
    stops.unshift(sim.stop)
    const gwProbe = await freePort()
    const gw = await startGateway({
      redisUrl: redis.url,
      simUrl: sim.url,
      dataDir: join(dir.path, 'gateway'),
      env: { LOOP_PROBE_PORT: String(gwProbe) },
      nodeArgs
    })
    stops.unshift(gw.stop)
    const ours = await measure(gw.origin, gwProbe, { authorization: `Bearer ${gw.apiKey}` })
    await gw.stop()

    const floorProbe = await freePort()
    const floor = await startFloor(redis.url, { env: { LOOP_PROBE_PORT: String(floorProbe) }, nodeArgs })
    stops.unshift(floor.stop)
    const base = await measure(floor.origin, floorProbe, {})
    await floor.stop()

    const rows: Row[] = []
    for (const [name, list] of ours.sent) {
      const floorList = base.sent.get(name) ?? []
      const floorMax = maxOf(floorList)
      rows.push(row({
        bench: 'hostile-bodies',
        metric: `${name}: longest event-loop block (max of ${ROUNDS})`,
        unit: 'ms',
        ours: maxOf(list),
        floor: floorMax,
        target: { text: '< floor + 50 ms', met: x => x < floorMax + 50 },
        details: {
          statuses: list.map(s => s.status ?? s.error),
          floor_statuses: floorList.map(s => s.status ?? s.error),
          block_ms: list.map(s => round(s.blockMs ?? NaN, 1)),
          floor_block_ms: floorList.map(s => round(s.blockMs ?? NaN, 1)),
          answer_ms_p50: round(summarize(list.map(s => s.ms)).p50, 1),
          floor_answer_ms_p50: round(summarize(floorList.map(s => s.ms)).p50, 1)
        }
      }))
    }
    rows.push(row({
      bench: 'hostile-bodies',
      metric: `/health/live p99 while they arrive (every ${PROBE_INTERVAL_MS} ms)`,
      unit: 'ms',
      ours: ours.health.p99,
      floor: base.health.p99,
      target: { text: '< 10 ms', met: x => x < 10 && ours.health.errors === 0 },
      details: {
        ours: { ...ours.health, p50: round(ours.health.p50, 2), max: round(ours.health.max, 1) },
        floor: { ...base.health, p50: round(base.health.p50, 2), max: round(base.health.max, 1) }
      }
    }))
    return rows
  } finally {
    for (const stop of stops) await stop().catch(() => {})
    dir.remove()
  }
}
