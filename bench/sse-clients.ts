/**
 * The SSE load generator of bench/benches/sse.ts, run as its own process so its CPU and memory are apart from the
 * server's. Reads a spec (JSON file named by argv[2]), opens one stream per path over one undici pool (a
 * connection each), prints `READY {…}` on stdout when every stream has its answer, records the receive time of
 * every event frame (`id:` line) on every stream, and prints one JSON result line when every stream has ended or
 * at the deadline. It does not reconnect: a stream the server ended early shows up as events missing.
 */
import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { Pool } from 'undici'

export interface SseSpec {
  origin: string
  headers: Record<string, string>
  paths: string[]
  /** Streams being opened at once (a burst of 2,000 would measure the accept queue, not the streams). */
  openConcurrency: number
  /** Everything is cut at this many ms after start. */
  deadlineMs: number
}

export interface SseResult {
  opened: number
  statuses: Record<string, number>
  errors: number
  errorSamples: string[]
  /** Per stream (same order as paths): [event id, receive time in epoch ms] of each frame, and whether it ended. */
  streams: Array<{ frames: Array<[string, number]>, ended: boolean }>
  openMs: number
  /** CPU ms this process used from `READY` to its end (it is gone when the bench would read its /proc entry). */
  cpuMsAfterReady: number
}

/** Wall-clock ms with sub-ms resolution, comparable with the Redis stream ids' ms on the same machine. */
const wallMs = () => performance.timeOrigin + performance.now()

const spec = JSON.parse(readFileSync(process.argv[2], 'utf8')) as SseSpec
const started = Date.now()
const pool = new Pool(spec.origin, { connections: spec.paths.length, pipelining: 1 })
const result: SseResult = {
  opened: 0,
  statuses: {},
  errors: 0,
  errorSamples: [],
  streams: spec.paths.map(() => ({ frames: [], ended: false })),
  openMs: 0,
  cpuMsAfterReady: 0
}
const controller = new AbortController()
const deadline = setTimeout(() => controller.abort(), spec.deadlineMs)

const bodies: Array<Promise<void>> = []

async function consume (i: number, body: AsyncIterable<Buffer>): Promise<void> {
  const stream = result.streams[i]
  let buffer = ''
  try {
    for await (const chunk of body) {
      buffer += chunk.toString('utf8')
      let cut
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const frame = buffer.slice(0, cut)
        buffer = buffer.slice(cut + 2)
        if (frame.startsWith('id: ')) stream.frames.push([frame.slice(4, frame.indexOf('\n')), wallMs()])
      }
    }
    stream.ended = true
  } catch (err) {
    if ((err as Error).name !== 'AbortError') {
      result.errors++
      if (result.errorSamples.length < 3) result.errorSamples.push((err as Error).message)
    }
  }
}

let next = 0
async function opener (): Promise<void> {
  while (next < spec.paths.length && !controller.signal.aborted) {
    const i = next++
    try {
      const res = await pool.request({
        method: 'GET',
        path: spec.paths[i],
        headers: spec.headers,
        signal: controller.signal,
        headersTimeout: 30_000,
        bodyTimeout: 0
      })
      result.statuses[res.statusCode] = (result.statuses[res.statusCode] ?? 0) + 1
      if (res.statusCode === 200) {
        result.opened++
        bodies.push(consume(i, res.body))
      } else {
        await res.body.dump()
      }
    } catch (err) {
      result.errors++
      if (result.errorSamples.length < 3) result.errorSamples.push((err as Error).message)
    }
  }
}

const t0 = Date.now()
await Promise.all(Array.from({ length: spec.openConcurrency }, opener))
result.openMs = Date.now() - t0
const cpuAtReady = process.cpuUsage()
process.stdout.write(`READY ${JSON.stringify({ opened: result.opened, statuses: result.statuses })}\n`)
await Promise.all(bodies)
const cpu = process.cpuUsage(cpuAtReady)
result.cpuMsAfterReady = Math.round((cpu.user + cpu.system) / 1000)
clearTimeout(deadline)
await pool.destroy()
// A pipe's write is asynchronous: exit only once the (few hundred KB) line is out.
process.stdout.write(JSON.stringify({ ...result, elapsedMs: Date.now() - started }) + '\n', () => process.exit(0))
