/**
 * `npm run bench [-- <name>...]`: the performance benchmarks. Each one starts its own redis-server (AOF on), the
 * simulator (in this process, the "runner" in CPU figures), the gateway as a child process, a bare-Fastify floor as
 * a child process and the load generator as a child process, on loopback only, and stops them all.
 * stdout: one JSON line per result (ours, the floor measured in the same run, ours/floor, target, machine), then
 * the table in markdown. Also writes bench/results/latest.json (partial.json, not committed, when only some
 * benchmarks ran). Progress goes to stderr. Targets are reported,
 * never enforced: the exit code is 0 unless a benchmark could not run.
 *
 * BENCH_CPU_PROF=1 runs every gateway with --cpu-prof (the profile directory is printed at the end).
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createLarge } from './benches/create-large.ts'
import { callback } from './benches/callback.ts'
import { statusRead } from './benches/status-read.ts'
import { hostileBodies } from './benches/hostile-bodies.ts'
import { sse } from './benches/sse.ts'
import { lifecycle } from './benches/lifecycle.ts'
import { webhook } from './benches/webhook.ts'
import { machine } from './lib/machine.ts'
import { ROOT, stillRunning, stopAll } from './lib/proc.ts'
import { markdownTable, toLine, type ResultLine, type Row } from './lib/report.ts'

/** The whole run must end by itself; past this everything is stopped and the run fails. */
const HARD_DEADLINE_MS = 600_000

const profileDir = process.env.BENCH_CPU_PROF === '1' ? mkdtempSync(join(tmpdir(), 'kg-bench-prof-')) : undefined
if (profileDir !== undefined) process.env.BENCH_CPU_PROF_DIR = profileDir
const BENCHES: Record<string, () => Promise<Row[]>> = {
  'create-large': createLarge,
  callback,
  'status-read': statusRead,
  'hostile-bodies': hostileBodies,
  sse,
  lifecycle,
  webhook
}

const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`)

async function shutdown (code: number, why: string): Promise<never> {
  log(why)
  await stopAll()
  process.exit(code)
}

const deadline = setTimeout(() => {
  shutdown(2, `hard deadline of ${HARD_DEADLINE_MS / 1000} s passed: stopping everything`).catch(() => process.exit(2))
}, HARD_DEADLINE_MS)
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => { shutdown(130, `${signal}: stopping everything`).catch(() => process.exit(130)) })
}

const wanted = process.argv.slice(2)
const unknown = wanted.filter(w => !(w in BENCHES))
if (unknown.length > 0) {
  console.error(`unknown benchmark(s): ${unknown.join(', ')}; known: ${Object.keys(BENCHES).join(', ')}`)
  process.exit(1)
}

const m = machine()
const started = Date.now()
const lines: ResultLine[] = []
const failed: string[] = []
log(
  `node ${m.node}, ${m.cpus} × ${m.cpu_model}, redis ${m.redis_server}, ` +
  `fastify ${m.packages.fastify}, ioredis ${m.packages.ioredis}, bullmq ${m.packages.bullmq}`
)
for (const name of wanted.length > 0 ? wanted : Object.keys(BENCHES)) {
  const t0 = Date.now()
  log(`${name}: running`)
  try {
    for (const r of await BENCHES[name]()) {
      const line = toLine(r, m, new Date().toISOString())
      lines.push(line)
      process.stdout.write(JSON.stringify(line) + '\n')
    }
    log(`${name}: done in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
  } catch (err) {
    failed.push(name)
    log(`${name}: FAILED: ${(err as Error).stack ?? String(err)}`)
  } finally {
    await stopAll()
  }
}
clearTimeout(deadline)

const left = stillRunning()
if (left.length > 0) failed.push(`processes left running: ${left.join(', ')}`)

// The committed results are a whole run's (the README's table): a run of some benchmarks writes beside them.
const resultFile = wanted.length === 0 ? 'latest.json' : 'partial.json'
mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true })
writeFileSync(join(ROOT, 'bench', 'results', resultFile), JSON.stringify(lines, null, 2) + '\n')

/** A warning per benchmark during which other processes used a noticeable share of the machine. */
function noiseNotes (all: ResultLine[]): string[] {
  const notes: string[] = []
  for (const l of all) {
    if (typeof l.others_share === 'number' && l.others_share > 0.05) {
      notes.push(
        `Note: during ${l.bench}, processes outside the benchmark used ${Math.round(l.others_share * 100)}% ` +
        'of the machine\'s CPU; its numbers are noisy.'
      )
    }
  }
  return notes.length === 0 ? [] : [...notes, '']
}

const shared = 'load generator, gateway/floor and redis-server share the same cores'
process.stdout.write([
  '',
  `Benchmarks, ${new Date().toISOString().slice(0, 10)}: node ${m.node}, ${m.cpus} × ${m.cpu_model}, ` +
    `redis-server ${m.redis_server} (AOF everysec), ` +
    `fastify ${m.packages.fastify}, ioredis ${m.packages.ioredis}, bullmq ${m.packages.bullmq}; loopback, ${shared}. ` +
    'ratio = ours / floor (floor: bare Fastify with the same Redis round trips, same run).',
  '',
  markdownTable(lines),
  '',
  ...noiseNotes(lines)
].join('\n') + '\n')
if (profileDir !== undefined) log(`gateway CPU profile(s) in ${profileDir}`)
log(`total ${((Date.now() - started) / 1000).toFixed(1)} s; results in bench/results/${resultFile}`)
if (failed.length > 0) {
  log(`failed: ${failed.join('; ')}`)
  process.exitCode = 1
}
