/**
 * What each benchmark starts: its own redis-server (AOF on, as in production), the CometAPI simulator on loopback,
 * the gateway as a child process (built as the Dockerfile builds it, see buildGateway), the bare-Fastify floor as a
 * child process, and the load generator as a child process. Everything is registered with proc.ts so it is stopped
 * on any way out.
 */
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { freePort, startRedisServer } from '../../src/infra/embedded-redis.ts'
import { Simulator } from '../../simulator/app.ts'
import { cmdlineOf, ROOT, startNode, track, waitExit, waitHttpOk, type NodeChild } from './proc.ts'
import type { ClosedResult, ClosedSpec, LargeResult, LargeSpec } from '../load.ts'

export interface TmpDir { path: string, remove: () => void }

/** A temporary directory, removed by `remove()` or, on an early exit, by stopAll() after the processes using it. */
export function tmp (name: string): TmpDir {
  const path = mkdtempSync(join(tmpdir(), `kg-bench-${name}-`))
  const remove = track(`tmp dir ${path}`, undefined, async () => { rmSync(path, { recursive: true, force: true }) })
  return { path, remove: () => { remove().catch(() => {}) } }
}

export interface RedisHandle { url: string, pid: number, stop: () => Promise<void> }

/** A redis-server with AOF on (appendfsync everysec), data in `dir`. */
export async function startRedis (dir: string): Promise<RedisHandle> {
  const server = await startRedisServer({ dir, persist: true })
  const stop = track('redis-server', server.process, server.stop)
  return { url: server.url, pid: server.process.pid as number, stop }
}

/** The simulator in this process, with no automatic progress: tasks stay `submitted` and send no callbacks. */
export async function startSimulator (): Promise<{ url: string, sim: Simulator, stop: () => Promise<void> }> {
  const sim = new Simulator({ auto: false })
  const url = await sim.listen(0, '127.0.0.1')
  const stop = track('simulator', undefined, async () => await sim.close())
  return { url, sim, stop }
}

/** Where buildGateway puts the compiled gateway: under node_modules, so the compiled code finds its packages. */
const BUILD_DIR = join(ROOT, 'node_modules', '.cache', 'kling-gateway-bench')
let built: string | undefined

/**
 * Compiles the gateway once per run with `npm run build`'s script, so the benchmarks measure what production runs
 * (`node dist/src/server.js`), not tsx's on-the-fly transform (its keepNames wrappers cost a few per cent per
 * request). BENCH_TSX=1 runs the sources under tsx instead.
 */
export function buildGateway (): string {
  if (process.env.BENCH_TSX === '1') return 'src/server.ts'
  if (built === undefined) {
    rmSync(BUILD_DIR, { recursive: true, force: true })
    const stdio: ['ignore', 'ignore', 'inherit'] = ['ignore', 'ignore', 'inherit']
    execFileSync(process.execPath, [join(ROOT, 'scripts', 'build.mjs'), BUILD_DIR], { stdio })
    built = join(BUILD_DIR, 'src', 'server.js')
  }
  return built
}

export interface Gateway {
  origin: string
  pid: number
  apiKey: string
  callbackSecret: string
  node: NodeChild
  stop: () => Promise<void>
}

/**
 * The gateway as production runs it, in a child process; resolves when /health/ready answers 200. Tried twice: the
 * port comes from freePort(), and on a shared machine someone else can take it before the child binds it.
 */
export async function startGateway (
  opts: { redisUrl: string, simUrl: string, dataDir: string, env?: Record<string, string>, nodeArgs?: string[] }
): Promise<Gateway> {
  const profile = process.env.BENCH_CPU_PROF_DIR
  const prof = profile === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${profile}`]
  const all = { ...opts, nodeArgs: [...prof, ...opts.nodeArgs ?? []] }
  try {
    return await startGatewayOnce(all)
  } catch (err) {
    process.stderr.write(`[bench] gateway did not start, trying once more: ${(err as Error).message}\n`)
    return await startGatewayOnce(all)
  }
}

async function startGatewayOnce (
  opts: { redisUrl: string, simUrl: string, dataDir: string, env?: Record<string, string>, nodeArgs?: string[] }
): Promise<Gateway> {
  const port = await freePort()
  const origin = `http://127.0.0.1:${port}`
  const apiKey = `bench-${randomBytes(12).toString('hex')}`
  const callbackSecret = randomBytes(32).toString('hex')
  const script = buildGateway()
  const node = startNode('gateway', script, {
    PORT: String(port),
    HOST: '127.0.0.1',
    REDIS_URL: opts.redisUrl,
    COMETAPI_BASE_URL: opts.simUrl,
    COMETAPI_KEY: 'bench-comet-key',
    CALLBACK_SECRET: callbackSecret,
    API_KEYS: `bench:${apiKey}`,
    PUBLIC_BASE_URL: origin,
    // The gateway is on loopback, behind COMETAPI_KEY's simulator.
    CALLBACK_ALLOW_INSECURE: 'true',
    LOG_LEVEL: 'warn',
    DATA_DIR: opts.dataDir,
    SHUTDOWN_GRACE_MS: '5000',
    // One caller at thousands of creates a second: the per-caller limits would measure themselves, not the gateway.
    CALLER_CREATES_PER_MINUTE: '0',
    CALLER_MAX_ACTIVE_TASKS: '0',
    ...opts.env
  }, [], opts.nodeArgs)
  try {
    await waitHttpOk(`${origin}/health/ready`, node.child, node.output)
    const cmdline = cmdlineOf(node.pid) ?? ''
    if (!cmdline.includes(script)) throw new Error(`pid ${node.pid} is not the gateway (${cmdline})`)
  } catch (err) {
    await node.stop()
    throw err
  }
  return { origin, pid: node.pid, apiKey, callbackSecret, node, stop: node.stop }
}

/** What the gateway logged at warn or above during a benchmark (it runs at LOG_LEVEL=warn), by message. */
export function gatewayWarnings (
  gw: Gateway
): { count: number, by_message: Record<string, number>, samples: string[] } {
  const byMessage: Record<string, number> = {}
  const samples: string[] = []
  for (const line of gw.node.problems) {
    let msg = 'unparsed'
    try { msg = String((JSON.parse(line) as { msg?: unknown }).msg) } catch {}
    if (byMessage[msg] === undefined && samples.length < 5) samples.push(line)
    byMessage[msg] = (byMessage[msg] ?? 0) + 1
  }
  return { count: gw.node.problems.length, by_message: byMessage, samples }
}

export interface Floor { origin: string, pid: number, stop: () => Promise<void> }

/** bench/floor.ts in a child process against the same Redis (and key prefix) as the gateway. */
export async function startFloor (
  redisUrl: string, opts: { env?: Record<string, string>, nodeArgs?: string[] } = {}
): Promise<Floor> {
  const port = await freePort()
  const origin = `http://127.0.0.1:${port}`
  const node = startNode('floor', 'bench/floor.ts', {
    PORT: String(port),
    REDIS_URL: redisUrl,
    REDIS_PREFIX: 'kg',
    CREATE_BODY_LIMIT_BYTES: String(60 * 1024 * 1024),
    ...opts.env
  }, [], opts.nodeArgs)
  await waitHttpOk(`${origin}/health/live`, node.child, node.output)
  return { origin, pid: node.pid, stop: node.stop }
}

/** Runs bench/load.ts in its own process with `spec`; bounded by `timeoutMs`. */
export async function runLoad (spec: ClosedSpec, timeoutMs: number): Promise<ClosedResult>
export async function runLoad (spec: LargeSpec, timeoutMs: number): Promise<LargeResult>
export async function runLoad (spec: ClosedSpec | LargeSpec, timeoutMs: number): Promise<ClosedResult | LargeResult> {
  const dir = tmp('load')
  try {
    const file = join(dir.path, 'spec.json')
    writeFileSync(file, JSON.stringify(spec))
    const node = startNode('load', 'bench/load.ts', {}, [file])
    const code = await waitExit(node.child, timeoutMs)
    await node.stop()
    const line = node.stdout().trim().split('\n').at(-1) ?? ''
    if (code !== 0 || !line.startsWith('{')) throw new Error(`load generator failed (exit ${code}):\n${node.output()}`)
    return JSON.parse(line) as ClosedResult | LargeResult
  } finally {
    dir.remove()
  }
}

const URL_IMAGES = [{ image: 'https://images.example.com/bench/a.png' }, { image: 'https://images.example.com/bench/b.png' }]

/**
 * POSTs `count` small creates (image URLs, so nothing is parked) from `concurrency` loops on `pool`, until
 * `deadline`; returns the ids answered 202 and throws on any other answer.
 */
export async function createSmallTasks (
  pool: Pool, apiKey: string, count: number, opts: { concurrency: number, prompt: string, deadline?: number }
): Promise<string[]> {
  const headers = { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' }
  const deadline = opts.deadline ?? Infinity
  const ids: string[] = []
  let next = 0
  const creator = async () => {
    while (next < count && Date.now() < deadline) {
      next++
      const res = await pool.request({
        method: 'POST',
        path: '/v1/videos',
        headers,
        body: JSON.stringify({ image_list: URL_IMAGES, prompt: opts.prompt })
      })
      const body = await res.body.json() as { id?: string }
      if (res.statusCode !== 202 || body.id === undefined) {
        throw new Error(`create answered ${res.statusCode}: ${JSON.stringify(body)}`)
      }
      ids.push(body.id)
    }
  }
  await Promise.all(Array.from({ length: opts.concurrency }, creator))
  return ids
}

/**
 * Makes `count` small tasks through the API (image URLs, so nothing is parked) and waits until every one is
 * `submitted` upstream. Returns their ids and upstream task ids. Setup only: not measured.
 */
export async function makeSubmittedTasks (
  gw: Gateway,
  count: number,
  timeoutMs = 60_000
): Promise<Array<{ id: string, upstreamId: string }>> {
  const pool = new Pool(gw.origin, { connections: 16 })
  const headers = { authorization: `Bearer ${gw.apiKey}`, 'content-type': 'application/json' }
  const deadline = Date.now() + timeoutMs
  try {
    const ids = await createSmallTasks(pool, gw.apiKey, count, { concurrency: 16, prompt: 'benchmark task', deadline })
    const out: Array<{ id: string, upstreamId: string }> = []
    const pending = new Set(ids)
    while (pending.size > 0 && Date.now() < deadline) {
      for (const id of [...pending]) {
        const res = await pool.request({ method: 'GET', path: `/v1/videos/${id}`, headers })
        const task = await res.body.json() as { status?: string, upstream?: { task_id?: string } | null }
        if (task.status === 'submitted' && typeof task.upstream?.task_id === 'string') {
          out.push({ id, upstreamId: task.upstream.task_id })
          pending.delete(id)
        } else if (task.status !== 'queued') {
          throw new Error(`setup task ${id} went to ${task.status ?? res.statusCode}`)
        }
      }
      if (pending.size > 0) await new Promise(resolve => setTimeout(resolve, 100))
    }
    if (pending.size > 0) {
      throw new Error(`${pending.size} of ${count} setup tasks were not submitted within ${timeoutMs} ms`)
    }
    return out
  } finally {
    await pool.close()
  }
}
