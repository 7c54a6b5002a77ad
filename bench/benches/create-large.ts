/**
 * create-large (docs/DESIGN.md, "Performance targets" 5): POST /v1/videos with 4 × ~10 MB Base64 PNGs (55 MB of JSON).
 * One create thrown away, then 10 sequential creates (each waits until the previous task has been submitted upstream,
 * so no create shares the CPU with another's submit), then 8 at once against the default CREATE_MAX_LARGE_BODIES (8):
 * 8 × 202 expected, each then submitted upstream (streamed). Peak RSS is the gateway child's VmHWM (issue 15: < 400
 * MB). Floor (issue 15's definition): bare Fastify, same bodyLimit, reads the same body, decodes each image and
 * stores its bytes in Redis (one SET each), the same 10 sequential and 8 at once.
 */
import { writeFileSync } from 'node:fs'
import { Redis } from 'ioredis'
import { commandStats, perRequest } from '../lib/redis-stats.ts'
import { cpuShares } from '../lib/phase.ts'
import { join } from 'node:path'
import { largeCreateBody } from '../lib/images.ts'
import { memoryOf, cpuMsOf } from '../lib/proc.ts'
import { row, type Row } from '../lib/report.ts'
import { gatewayWarnings, startFloor, startGateway, startRedis, startSimulator, runLoad, tmp } from '../lib/stack.ts'
import { summarize, round } from '../lib/stats.ts'
import type { LargeOne } from '../load.ts'

/**
 * What is still parked once every accepted task has gone upstream: the byte counter PARKED_MAX_BYTES is checked
 * against, and the parked-image hashes (with whether their task exists).
 */
async function parkedLeftovers (
  redisUrl: string
): Promise<{ counterBytes: number, parkedKeys: number, parkedKeysWithoutTask: number }> {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
  try {
    const counterBytes = Number(await redis.get('{kg}:parked:bytes') ?? 0)
    const keys: string[] = []
    let cursor = '0'
    for (let i = 0; i < 1000; i++) {
      const [next, batch] = await redis.scan(cursor, 'MATCH', '{kg}:task:*:parked', 'COUNT', 1000)
      keys.push(...batch)
      cursor = next
      if (cursor === '0') break
    }
    let withoutTask = 0
    for (const key of keys) if (await redis.exists(key.replace(/:parked$/, '')) === 0) withoutTask++
    return { counterBytes, parkedKeys: keys.length, parkedKeysWithoutTask: withoutTask }
  } finally {
    await redis.quit()
  }
}

const SEQUENTIAL = 10
const BURST = 8
const MB = 1024 * 1024
/** The default CREATE_MAX_LARGE_BODIES (issue 15: at least 8 per replica, peak RSS < 400 MB). */
const LARGE_CAP = 8

export async function createLarge (): Promise<Row[]> {
  const dir = tmp('create-large')
  const stops: Array<() => Promise<void>> = []
  try {
    const { body, imageBytes } = largeCreateBody(4)
    const bodyFile = join(dir.path, 'body.json')
    writeFileSync(bodyFile, body)

    const redis = await startRedis(join(dir.path, 'redis'))
    stops.unshift(redis.stop)
    const sim = await startSimulator()
    stops.unshift(sim.stop)
    const gw = await startGateway({
      redisUrl: redis.url,
      simUrl: sim.url,
      dataDir: join(dir.path, 'gateway'),
      // CREATE_MAX_LARGE_BODIES is left at its default: the bench measures what a replica does out of the box.
      env: { CALLER_MAX_LARGE_BODIES: '0', PARKED_MAX_BYTES: '2000000000' }
    })
    const idleRss = memoryOf(gw.pid)?.rss ?? null
    const s0 = await commandStats(redis.url)
    const ours = await runLoad({
      mode: 'large',
      origin: gw.origin,
      headers: { authorization: `Bearer ${gw.apiKey}` },
      bodyFile,
      warmup: 1,
      sequential: SEQUENTIAL,
      settle: true,
      burst: BURST,
      requestTimeoutMs: 60_000,
      watchPids: { gateway: gw.pid, redis: redis.pid, runner: process.pid },
      memPid: gw.pid
    }, 150_000)
    const s1 = await commandStats(redis.url)
    const gwPeak = memoryOf(gw.pid)?.peakRss ?? ours.peakRssAfterBurst
    await gw.stop()
    const warnings = gatewayWarnings(gw)
    const parked = await parkedLeftovers(redis.url)

    const floor = await startFloor(redis.url)
    const floorIdleRss = memoryOf(floor.pid)?.rss ?? null
    const base = await runLoad({
      mode: 'large',
      origin: floor.origin,
      headers: {},
      bodyFile,
      warmup: 1,
      sequential: SEQUENTIAL,
      settle: false,
      burst: BURST,
      requestTimeoutMs: 60_000,
      watchPids: { floor: floor.pid, redis: redis.pid, runner: process.pid },
      memPid: floor.pid
    }, 150_000)
    const floorPeak = memoryOf(floor.pid)?.peakRss ?? base.peakRssAfterBurst
    await floor.stop()
    const redisCpuMs = cpuMsOf(redis.pid)

    const ok = (list: LargeOne[]) => list.filter(o => o.status === 202)
    const seq = summarize(ok(ours.sequential).map(o => o.ms))
    const seqFloor = summarize(ok(base.sequential).map(o => o.ms))
    const settle = summarize(ours.sequential.map(o => o.settleMs).filter((x): x is number => x !== null))
    const accepted = ours.burst.filter(o => o.status === 202)
    const shed = ours.burst.filter(o => o.status === 503)
    const shedWithRetryAfter = shed.filter(o => o.retryAfter !== null)
    const failures = [...ours.warmup, ...ours.sequential, ...ours.burst]
      .filter(o => o.status !== 202 && o.status !== 503)
    const common = {
      body_bytes: ours.bodyBytes,
      image_bytes: imageBytes,
      sequential: SEQUENTIAL,
      sequential_202: ok(ours.sequential).length,
      floor_sequential_202: ok(base.sequential).length,
      failures: failures.map(f => ({ status: f.status, error: f.error }))
    }
    return [
      row({
        bench: 'create-large',
        metric: 'time to 202, p50 (10 sequential)',
        unit: 'ms',
        ours: seq.p50,
        floor: seqFloor.p50,
        others_share: Math.max(
          cpuShares({ durationMs: ours.sequentialMs, cpuMs: ours.cpuMsSequential }).others_share ?? 0,
          cpuShares({ durationMs: base.sequentialMs, cpuMs: base.cpuMsSequential }).others_share ?? 0
        ),
        details: {
          ...common,
          warmup_ms: { ours: ours.warmup.map(o => round(o.ms, 1)), floor: base.warmup.map(o => round(o.ms, 1)) },
          ours_ms: ours.sequential.map(o => round(o.ms, 1)),
          floor_ms: base.sequential.map(o => round(o.ms, 1)),
          settle_after_202_ms_p50: round(settle.p50, 1),
          redis_per_accepted_create: perRequest(
            s0, s1, ok(ours.warmup).length + ok(ours.sequential).length + accepted.length
          ),
          cpu_ms_per_create: Object.fromEntries(
            Object.entries(ours.cpuMsSequential).map(([k, v]) => [k, v === null ? null : round(v / SEQUENTIAL, 1)])
          ),
          floor_cpu_ms_per_create: Object.fromEntries(
            Object.entries(base.cpuMsSequential).map(([k, v]) => [k, v === null ? null : round(v / SEQUENTIAL, 1)])
          )
        }
      }),
      row({
        bench: 'create-large',
        metric: 'time to 202, p99 (= max of 10)',
        unit: 'ms',
        ours: seq.p99,
        floor: seqFloor.p99,
        target: {
          text: '≤ 1.5× floor',
          met: x => seqFloor.p99 > 0 && x <= 1.5 * seqFloor.p99 && common.sequential_202 === SEQUENTIAL
        }
      }),
      row({
        bench: 'create-large',
        metric: `time to 202, max of ${BURST} at once`,
        unit: 'ms',
        ours: summarize(accepted.map(o => o.ms)).max,
        floor: summarize(ok(base.burst).map(o => o.ms)).max,
        details: { floor_burst_202: ok(base.burst).length }
      }),
      row({
        bench: 'create-large',
        metric: `peak RSS (sequential + ${BURST} at once)`,
        unit: 'MB',
        ours: gwPeak === null ? null : gwPeak / MB,
        floor: floorPeak === null ? null : floorPeak / MB,
        target: { text: '< 400 MB', met: x => x < 400 },
        details: {
          gateway_idle_rss_mb: idleRss === null ? null : round(idleRss / MB, 1),
          gateway_peak_after_sequential_mb: ours.peakRssAfterSequential === null
            ? null
            : round(ours.peakRssAfterSequential / MB, 1),
          floor_idle_rss_mb: floorIdleRss === null ? null : round(floorIdleRss / MB, 1),
          floor_peak_note: 'the floor ran the same 10 sequential creates and 8 at once',
          redis_cpu_ms_total: redisCpuMs
        }
      }),
      row({
        bench: 'create-large',
        metric: `${BURST} at once: 202`,
        unit: '',
        ours: accepted.length,
        floor: null,
        target: { text: `= ${LARGE_CAP}`, met: x => x === LARGE_CAP },
        details: {
          burst: ours.burst.map(o => ({
            status: o.status,
            ms: round(o.ms, 1),
            retry_after: o.retryAfter,
            error: o.error
          })),
          gateway_log_warnings: warnings
        }
      }),
      row({
        bench: 'create-large',
        metric: `${BURST} at once: 503 + Retry-After`,
        unit: '',
        ours: shedWithRetryAfter.length,
        floor: null,
        target: {
          text: `= ${Math.max(0, BURST - LARGE_CAP)}`,
          met: x => x === Math.max(0, BURST - LARGE_CAP) && shed.length === Math.max(0, BURST - LARGE_CAP)
        },
        details: {
          shed_ms_p50: round(summarize(shed.map(o => o.ms)).p50, 1),
          accepted_ms_max: round(summarize(accepted.map(o => o.ms)).max, 1)
        }
      }),
      row({
        bench: 'create-large',
        metric: 'parked image bytes left after all settled',
        unit: 'MB',
        ours: parked.counterBytes / MB,
        floor: null,
        target: { text: '= 0 MB', met: x => x === 0 },
        details: {
          ...parked,
          note: 'every accepted task was submitted, so nothing should stay parked; ' +
            'a failed create must not leave its images or its share of the counter behind'
        }
      })
    ]
  } finally {
    for (const stop of stops) await stop().catch(() => {})
    dir.remove()
  }
}
