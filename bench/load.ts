/**
 * The load generator, run as its own process so that its CPU shows up apart from the server's (both still share
 * the machine's cores). Reads a spec (JSON file named by argv[2]), prints one JSON result line on stdout, exits.
 * Every loop is bounded by a request count and by a deadline.
 *
 * - `closed`: `connections` loops over a keep-alive pool, each sending the next request of the list as soon as the
 *   previous answer is read (closed loop: under saturation the tail is under-reported).
 *   A warm-up phase is thrown away, then the measured phase.
 * - `large`: `warmup` creates thrown away, then `sequential` creates one after the other (each optionally waiting
 *   until the task has left `queued`, so the next create does not share the CPU with the previous one's upstream
 *   submit), then `burst` at once.
 */
import { readFileSync } from 'node:fs'
import { Pool, request } from 'undici'
import { cpuMsOf, machineBusyMs, memoryOf } from './lib/proc.ts'
import { summarize, type LatencySummary } from './lib/stats.ts'

export interface LoadRequest { method: 'GET' | 'POST', path: string, body?: string, headers?: Record<string, string> }

export interface ClosedSpec {
  mode: 'closed'
  origin: string
  connections: number
  warmupMs: number
  warmupMaxRequests: number
  durationMs: number
  maxRequests: number
  headers: Record<string, string>
  requests: LoadRequest[]
  watchPids: Record<string, number>
}

export interface LargeSpec {
  mode: 'large'
  origin: string
  headers: Record<string, string>
  bodyFile: string
  /** Creates sent first and thrown away (JIT, connection and Redis warm-up). */
  warmup: number
  sequential: number
  /** Wait (polling GET /v1/videos/:id) until the task leaves `queued` before the next create. */
  settle: boolean
  burst: number
  requestTimeoutMs: number
  watchPids: Record<string, number>
  memPid: number
}

export interface PhaseResult {
  requests: number
  durationMs: number
  rps: number
  latencyMs: LatencySummary
  statuses: Record<string, number>
  errors: number
  errorSamples: string[]
  cpuMs: Record<string, number | null>
}

export interface ClosedResult { mode: 'closed', warmup: PhaseResult, measured: PhaseResult }

export interface LargeOne {
  status: number | null
  ms: number
  retryAfter: string | null
  settleMs: number | null
  id: string | null
  error: string | null
}
export interface LargeResult {
  mode: 'large'
  bodyBytes: number
  warmup: LargeOne[]
  sequential: LargeOne[]
  burst: LargeOne[]
  peakRssAfterSequential: number | null
  peakRssAfterBurst: number | null
  cpuMsSequential: Record<string, number | null>
  sequentialMs: number
}

const now = () => Number(process.hrtime.bigint()) / 1e6

function cpuSnapshot (pids: Record<string, number>): Record<string, number | null> {
  const out: Record<string, number | null> = {}
  for (const [name, pid] of Object.entries(pids)) out[name] = cpuMsOf(pid)
  const own = process.cpuUsage()
  out.load = (own.user + own.system) / 1000
  out.machine = machineBusyMs()
  return out
}

/**
 * CPU milliseconds each watched process, this generator and the whole machine used between two snapshots, and
 * `others`: what the rest of the machine (processes that are not part of this benchmark) used meanwhile.
 */
function cpuDelta (a: Record<string, number | null>, b: Record<string, number | null>): Record<string, number | null> {
  const out: Record<string, number | null> = {}
  for (const k of Object.keys(b)) {
    out[k] = a[k] === null || b[k] === null ? null : Math.round((b[k] as number) - (a[k] as number))
  }
  const parts = Object.entries(out).filter(([k]) => k !== 'machine').map(([, v]) => v)
  out.others = out.machine === null || parts.includes(null)
    ? null
    : Math.max(0, (out.machine as number) - parts.reduce((n: number, v) => n + (v as number), 0))
  return out
}

async function closedPhase (pool: Pool, spec: ClosedSpec, ms: number, max: number): Promise<PhaseResult> {
  const latencies = new Float64Array(max)
  const statuses: Record<string, number> = {}
  const errorSamples: string[] = []
  let issued = 0
  let done = 0
  let errors = 0
  const cpu0 = cpuSnapshot(spec.watchPids)
  const t0 = now()
  const end = t0 + ms
  const worker = async () => {
    while (issued < max && now() < end) {
      const r = spec.requests[issued % spec.requests.length]
      issued++
      const start = now()
      try {
        const res = await pool.request({
          method: r.method,
          path: r.path,
          body: r.body,
          headers: {
            ...spec.headers,
            ...r.headers,
            ...(r.body !== undefined && { 'content-type': 'application/json' })
          },
          headersTimeout: 10_000,
          bodyTimeout: 10_000
        })
        await res.body.dump()
        latencies[done++] = now() - start
        statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1
      } catch (err) {
        errors++
        if (errorSamples.length < 3) errorSamples.push((err as Error).message)
      }
    }
  }
  await Promise.all(Array.from({ length: spec.connections }, worker))
  const durationMs = now() - t0
  const cpu1 = cpuSnapshot(spec.watchPids)
  return {
    requests: done,
    durationMs,
    rps: done / (durationMs / 1000),
    latencyMs: summarize(latencies.subarray(0, done)),
    statuses,
    errors,
    errorSamples,
    cpuMs: cpuDelta(cpu0, cpu1)
  }
}

async function runClosed (spec: ClosedSpec): Promise<ClosedResult> {
  const pool = new Pool(spec.origin, { connections: spec.connections, pipelining: 1, keepAliveTimeout: 60_000 })
  try {
    const warmup = await closedPhase(pool, spec, spec.warmupMs, spec.warmupMaxRequests)
    const measured = await closedPhase(pool, spec, spec.durationMs, spec.maxRequests)
    return { mode: 'closed', warmup, measured }
  } finally {
    await pool.close()
  }
}

async function createOnce (spec: LargeSpec, body: Buffer): Promise<LargeOne> {
  const start = now()
  try {
    const res = await request(`${spec.origin}/v1/videos`, {
      method: 'POST',
      body,
      headers: { ...spec.headers, 'content-type': 'application/json' },
      headersTimeout: spec.requestTimeoutMs,
      bodyTimeout: spec.requestTimeoutMs,
      signal: AbortSignal.timeout(spec.requestTimeoutMs)
    })
    const text = await res.body.text()
    const ms = now() - start
    let id: string | null = null
    try { id = (JSON.parse(text) as { id?: string }).id ?? null } catch {}
    const retryAfter = res.headers['retry-after']
    return {
      status: res.statusCode,
      ms,
      retryAfter: typeof retryAfter === 'string' ? retryAfter : null,
      settleMs: null,
      id,
      error: null
    }
  } catch (err) {
    return {
      status: null,
      ms: now() - start,
      retryAfter: null,
      settleMs: null,
      id: null,
      error: (err as Error).message
    }
  }
}

/** Polls the task until it has left `queued` (its upstream submit is done or has failed), bounded by a deadline. */
async function settle (spec: LargeSpec, id: string, timeoutMs = 30_000): Promise<number | null> {
  const start = now()
  while (now() - start < timeoutMs) {
    const res = await request(`${spec.origin}/v1/videos/${id}`, {
      headers: spec.headers,
      headersTimeout: 5000,
      bodyTimeout: 5000
    })
    const task = await res.body.json() as { status?: string }
    if (res.statusCode === 200 && task.status !== 'queued') return now() - start
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  return null
}

async function runLarge (spec: LargeSpec): Promise<LargeResult> {
  const body = readFileSync(spec.bodyFile)
  const warmup: LargeOne[] = []
  for (let i = 0; i < spec.warmup; i++) {
    const one = await createOnce(spec, body)
    if (spec.settle && one.status === 202 && one.id !== null) one.settleMs = await settle(spec, one.id)
    warmup.push(one)
  }
  const sequential: LargeOne[] = []
  const cpu0 = cpuSnapshot(spec.watchPids)
  const t0 = now()
  for (let i = 0; i < spec.sequential; i++) {
    const one = await createOnce(spec, body)
    if (spec.settle && one.status === 202 && one.id !== null) one.settleMs = await settle(spec, one.id)
    sequential.push(one)
  }
  const cpuMsSequential = cpuDelta(cpu0, cpuSnapshot(spec.watchPids))
  const sequentialMs = now() - t0
  const peakRssAfterSequential = memoryOf(spec.memPid)?.peakRss ?? null
  const burst = await Promise.all(Array.from({ length: spec.burst }, async () => await createOnce(spec, body)))
  if (spec.settle) {
    for (const one of burst) if (one.status === 202 && one.id !== null) one.settleMs = await settle(spec, one.id)
  }
  const peakRssAfterBurst = memoryOf(spec.memPid)?.peakRss ?? null
  return {
    mode: 'large',
    bodyBytes: body.length,
    warmup,
    sequential,
    burst,
    peakRssAfterSequential,
    peakRssAfterBurst,
    cpuMsSequential,
    sequentialMs
  }
}

const spec = JSON.parse(readFileSync(process.argv[2], 'utf8')) as ClosedSpec | LargeSpec
const result = spec.mode === 'closed' ? await runClosed(spec) : await runLarge(spec)
process.stdout.write(JSON.stringify(result) + '\n')
