/**
 * One fault case = one row of the table: a Redis topology, the stack on it, the load with a fault script running
 * beside it, a settle period, and the counts. Everything it starts is stopped in `finally` blocks; the runner also
 * calls stopAll() after each case, for whatever an aborted case left behind.
 */
import { mkdirSync, rmSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { track } from '../../bench/lib/proc.ts'
import { runLoad, type LoadResult } from './load.ts'
import { Stack, type RedisTarget, type StackOptions } from './stack.ts'
import { count, settle, type Counters, type Details } from './verify.ts'

export interface Profile {
  short: boolean
  ratePerSec: number
  durationMs: number
  settleMs: number
  readsPerSec: number
  cancelRatio: number
}

export const PROFILES: Record<'short' | 'full', Profile> = {
  short: { short: true, ratePerSec: 3, durationMs: 10_000, settleMs: 25_000, readsPerSec: 3, cancelRatio: 0.1 },
  full: { short: false, ratePerSec: 5, durationMs: 30_000, settleMs: 60_000, readsPerSec: 5, cancelRatio: 0.1 }
}

export interface CaseContext {
  profile: Profile
  logDir: string
  dataDir: string
  signal: AbortSignal
  log: (msg: string) => void
}

export interface Topology {
  target: RedisTarget
  /** One line for the report: what Redis was. */
  describe: string
  /** Log files of the Redis processes. */
  logs: string[]
  /** What each Redis node holds at the end (role, keys, replication offset), for the notes. */
  diagnose?: () => Promise<string[]>
  stop: () => Promise<void>
}

export interface FaultContext {
  stack: Stack
  profile: Profile
  signal: AbortSignal
  /** Resolves `ms` after the load started (at once if that is past). */
  at: (ms: number) => Promise<void>
  /** Measures, in the background, the seconds from `fromMs` until every live replica is ready; the longest counts. */
  ready: (fromMs: number) => void
  note: (msg: string) => void
}

export interface CaseDef<T extends Topology = Topology> {
  /** `scenario` or `scenario/variant`: one table row. */
  id: string
  scenario: string
  /** Part of the CI subset (`--short`). */
  short: boolean
  /** Settle period cap, when the profile's is not enough (e.g. a SIGKILLed replica's jobs take 30 s to stall). */
  settleMs?: (p: Profile) => number
  stack?: Partial<Pick<StackOptions, 'minReplicasAcked' | 'env' | 'failRatio' | 'callbacks'>>
  topology: (ctx: CaseContext) => Promise<T>
  fault: (f: FaultContext, topo: T) => Promise<void>
}

export interface CaseResult {
  id: string
  scenario: string
  ok: boolean
  error: string | null
  counters: Counters | null
  details: Details | null
  redis: string
  notes: string[]
  logs: string[]
  seconds: number
}

export async function runCase<T extends Topology> (def: CaseDef<T>, ctx: CaseContext): Promise<CaseResult> {
  const started = Date.now()
  const notes: string[] = []
  const logs: string[] = []
  const result = (
    ok: boolean, error: string | null, counters: Counters | null = null, details: Details | null = null, redis = ''
  ): CaseResult => ({
    id: def.id,
    scenario: def.scenario,
    ok,
    error,
    counters,
    details,
    redis,
    notes,
    logs,
    seconds: (Date.now() - started) / 1000
  })
  mkdirSync(ctx.logDir, { recursive: true })
  mkdirSync(ctx.dataDir, { recursive: true })
  const removeData = track(`data dir ${ctx.dataDir}`, undefined, async () => {
    rmSync(ctx.dataDir, { recursive: true, force: true })
  })
  let topo: T | undefined
  let stack: Stack | undefined
  try {
    ctx.log('starting Redis')
    topo = await def.topology(ctx)
    ctx.log(`Redis: ${topo.describe}; starting the simulator, the balancer and 2 replicas`)
    stack = await Stack.start({ logDir: ctx.logDir, dataDir: ctx.dataDir, redis: topo.target, ...def.stack })
    logs.push(...stack.logs(), ...topo.logs)
    const keyPrefix = `${def.id.replace(/\//g, '.')}-${Date.now().toString(36)}`
    const t0 = Date.now()
    const readyRuns: Array<Promise<number | null>> = []
    const f: FaultContext = {
      stack,
      profile: ctx.profile,
      signal: ctx.signal,
      at: async (ms: number) => { await sleep(Math.max(0, t0 + ms - Date.now()), undefined, { signal: ctx.signal }) },
      ready: (fromMs: number) => {
        readyRuns.push((stack as Stack).secondsToReady(fromMs, 60_000, ctx.signal).catch((err: Error) => {
          notes.push(`readiness: ${err.message}`)
          return null
        }))
      },
      note: (msg: string) => { notes.push(msg); ctx.log(msg) }
    }
    ctx.log(`load: ${ctx.profile.ratePerSec}/s for ${ctx.profile.durationMs / 1000} s, fault script running`)
    const loadRun = runLoad({
      origin: stack.lb.origin,
      callers: stack.callers,
      ratePerSec: ctx.profile.ratePerSec,
      durationMs: ctx.profile.durationMs,
      keyPrefix,
      cancelRatio: ctx.profile.cancelRatio,
      readsPerSec: ctx.profile.readsPerSec,
      maxAttempts: 10,
      attemptTimeoutMs: 6000,
      requestBudgetMs: 30_000,
      signal: ctx.signal
    })
    let faultError: Error | null = null
    const faultRun = def.fault(f, topo).catch((err: Error) => { faultError = err })
    const load: LoadResult = await loadRun
    await faultRun
    const readiness = await Promise.all(readyRuns)
    if (faultError !== null) notes.push(`fault script failed: ${(faultError as Error).message}`)
    const measured = readiness.filter((s): s is number => s !== null)
    const secondsToReady = measured.length === 0 ? null : Math.round(Math.max(...measured) * 10) / 10

    const settleMs = def.settleMs?.(ctx.profile) ?? ctx.profile.settleMs
    ctx.log(`load done (${load.creates.length} creates); settling (≤ ${settleMs / 1000} s)`)
    const api = { origin: stack.lb.origin, adminKey: stack.admin.key }
    const settled = await settle(api, load, () => (stack as Stack).receiver.requests, settleMs, ctx.signal)
    const simTasks = await stack.sim.tasks()
    const { counters, details } = await count(api, load, stack.receiver.requests, simTasks, {
      keyPrefix, secondsToReady, settle: settled
    })
    if (topo.diagnose !== undefined) {
      notes.push(...await topo.diagnose().catch((err: Error) => [`diagnose: ${err.message}`]))
    }
    const ok = faultError === null
    return result(ok, faultError === null ? null : (faultError as Error).message, counters, details, topo.describe)
  } catch (err) {
    return result(false, (err as Error).message, null, null, topo?.describe ?? '')
  } finally {
    await stack?.stop().catch(() => {})
    await topo?.stop().catch(() => {})
    await removeData()
  }
}
