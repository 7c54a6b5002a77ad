/**
 * `npm run chaos`: the fault suite. Does a 202 always become a task that ends exactly once, and does no request pay
 * upstream twice, while Redis, the replicas or CometAPI fail under load?
 *
 *   npm run chaos                       every case, full load (about 15 minutes)
 *   npm run chaos -- --short            the CI subset with shorter load (under 3 minutes)
 *   npm run chaos -- --only <case>      one scenario (`host-crash`) or one row (`host-crash/everysec`); repeatable
 *   npm run chaos -- --report-only      print and write the results, but exit 0 whatever they say
 *   npm run chaos -- --list             the cases, and which are in the short subset
 *
 * Each case starts its own Redis topology, simulator, balancer, two gateway replicas and webhook receiver on
 * loopback, runs the load with its fault beside it, settles, counts, and stops everything. Progress goes to stderr,
 * the table to stdout; one JSON line per case goes to chaos/results/latest.jsonl; logs stay in
 * chaos/results/logs/<case>/ (their paths are printed for a failing case). Exit code 1 when a bad count is not zero
 * or a case could not run, 2 when the hard deadline passed, 130 on a signal.
 */
import { setMaxListeners } from 'node:events'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { machine } from '../bench/lib/machine.ts'
import { ROOT, stillRunning, stopAll } from '../bench/lib/proc.ts'
import { reapOrphans } from '../test/helpers/group-process.ts'
import { PROFILES, runCase, type CaseDef, type CaseResult, type Topology } from './lib/case.ts'
import { markdownTable, passed, verdict } from './lib/report.ts'
import { cases as clusterCases } from './scenarios/cluster-master-kill.ts'
import { cases as delayedCases } from './scenarios/delayed-command.ts'
import { cases as hostCrashCases } from './scenarios/host-crash.ts'
import { cases as kill9Cases } from './scenarios/redis-kill9.ts'
import { cases as replicaCases } from './scenarios/replicas.ts'
import { cases as sentinelCases } from './scenarios/sentinel.ts'
import { cases as upstreamCases } from './scenarios/upstream-faults.ts'

const ALL = [
  ...kill9Cases, ...hostCrashCases, ...delayedCases, ...sentinelCases, ...clusterCases, ...replicaCases,
  ...upstreamCases
] as unknown as CaseDef<Topology>[]

const { values } = parseArgs({
  options: {
    short: { type: 'boolean', default: false },
    only: { type: 'string', multiple: true },
    'report-only': { type: 'boolean', default: false },
    list: { type: 'boolean', default: false }
  }
})

const log = (msg: string) => process.stderr.write(`[chaos ${new Date().toISOString().slice(11, 19)}] ${msg}\n`)

if (values.list === true) {
  for (const c of ALL) console.log(`${c.id}${c.short ? '  (short)' : ''}`)
  process.exit(0)
}

const profile = values.short === true ? PROFILES.short : PROFILES.full
const only = (values.only ?? []).flatMap(o => o.split(',')).filter(Boolean)
const unknown = only.filter(o => !ALL.some(c => c.id === o || c.scenario === o))
if (unknown.length > 0) {
  console.error(`unknown case(s): ${unknown.join(', ')}; known: ${ALL.map(c => c.id).join(', ')}`)
  process.exit(1)
}
const selected = only.length > 0
  ? ALL.filter(c => only.includes(c.id) || only.includes(c.scenario))
  : ALL.filter(c => !profile.short || c.short)

/** The whole run ends by itself: past this, everything is stopped and the run fails. */
const HARD_DEADLINE_MS = profile.short ? 170_000 : 30 * 60_000
/** One case: its load, its settle cap, and a minute for starting and stopping everything. */
const caseDeadline = (c: CaseDef<Topology>) =>
  profile.durationMs + (c.settleMs?.(profile) ?? profile.settleMs) + 60_000

const RESULTS = join(ROOT, 'chaos', 'results')
const runTmp = mkdtempSync(join(tmpdir(), 'kg-chaos-'))
const results: CaseResult[] = []
const started = Date.now()
const m = machine()
let current: { ac: AbortController, def: CaseDef<Topology>, started: number } | undefined
let finishing = false

/** A row for a case that never produced its own (interrupted, or abandoned at its deadline). */
function unfinished (def: CaseDef<Topology>, error: string, seconds: number): CaseResult {
  const { id, scenario } = def
  return {
    id, scenario, ok: false, error, counters: null, details: null, redis: '', notes: [], logs: [], seconds, weaker: null
  }
}

function write (): void {
  mkdirSync(RESULTS, { recursive: true })
  const ts = new Date().toISOString()
  const lines = results.map(r => JSON.stringify({
    ts,
    case: r.id,
    scenario: r.scenario,
    ok: passed(r),
    verdict: verdict(r),
    profile: profile.short ? 'short' : 'full',
    load: { rate_per_s: profile.ratePerSec, duration_s: profile.durationMs / 1000 },
    redis: r.redis,
    counters: r.counters,
    details: r.details,
    notes: r.notes,
    error: r.error,
    logs: r.logs.map(p => p.startsWith(ROOT) ? p.slice(ROOT.length) : p),
    seconds: r.seconds,
    machine: m
  }))
  writeFileSync(join(RESULTS, 'latest.jsonl'), lines.join('\n') + (lines.length > 0 ? '\n' : ''))
}

function report (): void {
  write()
  console.log(markdownTable(results))
  for (const r of results.filter(x => !passed(x))) {
    log(`${r.id}: ${verdict(r)}`)
    for (const n of r.notes) log(`  note: ${n}`)
    for (const [k, v] of Object.entries(r.details?.examples ?? {})) if (v.length > 0) log(`  ${k}: ${v.join('; ')}`)
    for (const p of r.logs) log(`  log: ${p}`)
  }
  const took = Math.round((Date.now() - started) / 1000)
  log(`${results.length} case(s) in ${took} s; results in chaos/results/latest.jsonl`)
}

async function finish (code: number, why?: string): Promise<never> {
  if (finishing) process.exit(code)
  finishing = true
  if (why !== undefined) log(why)
  if (current !== undefined) {
    current.ac.abort()
    results.push(unfinished(current.def, `interrupted: ${why ?? 'stopped'}`, (Date.now() - current.started) / 1000))
  }
  await stopAll()
  rmSync(runTmp, { recursive: true, force: true })
  const left = stillRunning()
  if (left.length > 0) log(`still running after stopAll: ${left.join(', ')}`)
  report()
  process.exit(values['report-only'] === true ? 0 : code)
}

const hard = setTimeout(() => {
  finish(2, `hard deadline of ${HARD_DEADLINE_MS / 1000} s passed: stopping everything`).catch(() => process.exit(2))
}, HARD_DEADLINE_MS)
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(signal, () => { finish(130, `${signal}: stopping everything`).catch(() => process.exit(130)) })
}
process.on('uncaughtException', err => {
  finish(1, `uncaught: ${err.stack ?? err.message}`).catch(() => process.exit(1))
})
process.on('unhandledRejection', err => {
  finish(1, `unhandled rejection: ${String(err)}`).catch(() => process.exit(1))
})

const reaped = reapOrphans()
if (reaped.length > 0) log(`stopped ${reaped.length} process(es) an earlier, killed run left: ${reaped.join('; ')}`)
log(`${selected.length} case(s), ${profile.short ? 'short' : 'full'} profile; ` +
  `node ${m.node}, ${m.cpus} × ${m.cpu_model}, redis ${m.redis_server}`)

for (const def of selected) {
  const dirName = def.id.replace(/\//g, '_')
  const logDir = join(RESULTS, 'logs', dirName)
  rmSync(logDir, { recursive: true, force: true })
  const ac = new AbortController()
  // Every sleep and request of the case listens on this signal; dozens at once is expected, not a leak.
  setMaxListeners(10_000, ac.signal)
  const t0 = Date.now()
  current = { ac, def, started: t0 }
  log(`${def.id}: running (deadline ${Math.round(caseDeadline(def) / 1000)} s)`)
  const ctx = {
    profile, logDir, dataDir: join(runTmp, dirName), signal: ac.signal, log: (msg: string) => log(`${def.id}: ${msg}`)
  }
  const run = runCase(def, ctx)
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<'deadline'>(resolve => {
    timer = setTimeout(() => resolve('deadline'), caseDeadline(def))
  })
  const outcome = await Promise.race([run, deadline])
  clearTimeout(timer)
  let result: CaseResult
  if (outcome === 'deadline') {
    ac.abort()
    await stopAll()
    // Its finally blocks run once what it waited on is gone; a bounded wait keeps cases from overlapping.
    const late = await Promise.race([run, new Promise<null>(resolve => setTimeout(() => resolve(null), 15_000))])
    const error = `case deadline of ${Math.round(caseDeadline(def) / 1000)} s passed`
    result = late === null ? unfinished(def, error, (Date.now() - t0) / 1000) : { ...late, ok: false, error }
  } else {
    result = outcome
  }
  await stopAll()
  current = undefined
  results.push(result)
  log(`${def.id}: ${verdict(result)} in ${Math.round((Date.now() - t0) / 1000)} s`)
}

clearTimeout(hard)
await finish(results.every(passed) ? 0 : 1)
