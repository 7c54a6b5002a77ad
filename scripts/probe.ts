/**
 * `npm run probe`: asks the real CometAPI what only it can answer about its Kling route, and says for each
 * assumption of the code whether it is confirmed, contradicted or inconclusive, with the evidence (README, "Live
 * probe"; docs/DESIGN.md, "The live probe"). Not run in CI: it needs COMETAPI_KEY, and every accepted create is
 * billed, so it states the cost first and creates nothing beyond `--yes-spend N`.
 *
 *   COMETAPI_KEY=sk-… npm run -s probe -- [--yes-spend N] [--only <check|group>]… [--json]
 *     [--receiver https://… --receiver-port P | --receiver local] [--poll-interval s] [--poll-timeout s]
 *     [--callback-wait s] [--timeout s] [--other-model name] [--burst n] [--list]
 *
 * Exit code: 0 nothing contradicted, 1 something contradicted, 2 a usage or configuration error.
 */
import { parseArgs } from 'node:util'
import { readFileSync } from 'node:fs'
import { CHECKS, CREATE_SPEC, PROBE_VERSION, planCreates, selectChecks, spec } from './probe/catalog.ts'
import { CallbackReceiver, judgeCallbacks, waitForCallbacks } from './probe/callbacks.ts'
import { Budget, record, type Ctx, type Options } from './probe/context.ts'
import { badKey, notFound, rateLimit } from './probe/free.ts'
import { ProbeHttp } from './probe/http.ts'
import { renderJson, renderText } from './probe/report.ts'
import { Replay } from './probe/replay.ts'
import { checkResult } from './probe/results.ts'
import { Scrubber } from './probe/scrub.ts'
import { duplicate, judgeAsked, masksBody } from './probe/asked.ts'
import {
  baseBody, createTask, ExternalLookup, judgeCreate, judgePoll, judgeTimestamps, pollAll, type ProbeTask
} from './probe/tasks.ts'

class UsageError extends Error {}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|localhost|\[::1\])$/

function seconds (name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback * 1000
  const n = Number(value)
  if (!Number.isFinite(n) || n < 0) throw new UsageError(`--${name} must be a number of seconds, got ${value}`)
  return Math.round(n * 1000)
}

function count (name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback
  if (!/^\d+$/.test(value)) throw new UsageError(`--${name} must be a whole number, got ${value}`)
  return Number(value)
}

/** A base URL we may send the key to: http(s), no credentials or query; plain http only to loopback. */
function checkedUrl (name: string, raw: string): string {
  let url: URL
  try { url = new URL(raw) } catch { throw new UsageError(`${name} is not a URL`) }
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && LOOPBACK.test(url.hostname))) {
    throw new UsageError(`${name} must be https (plain http only to loopback)`)
  }
  if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') {
    throw new UsageError(`${name} must have no credentials, query or fragment`)
  }
  return raw.replace(/\/+$/, '')
}

function options (argv: string[], env: NodeJS.ProcessEnv): Options | 'list' {
  const { values } = parseArgs({
    args: argv,
    options: {
      'yes-spend': { type: 'string' },
      only: { type: 'string', multiple: true },
      json: { type: 'boolean', default: false },
      receiver: { type: 'string' },
      'receiver-port': { type: 'string' },
      'poll-interval': { type: 'string' },
      'poll-timeout': { type: 'string' },
      'callback-wait': { type: 'string' },
      timeout: { type: 'string' },
      'other-model': { type: 'string' },
      burst: { type: 'string' },
      list: { type: 'boolean', default: false }
    }
  })
  if (values.list) return 'list'
  const key = env.COMETAPI_KEY ?? ''
  if (key === '') throw new UsageError('COMETAPI_KEY is not set: the probe asks the real CometAPI')
  const baseUrl = checkedUrl('COMETAPI_BASE_URL', env.COMETAPI_BASE_URL ?? 'https://api.cometapi.com')
  const { ids, unknown } = selectChecks(values.only)
  if (unknown.length > 0) throw new UsageError(`no such check or group: ${unknown.join(', ')} (see --list)`)
  let receiver: string | null = null
  let receiverPort: number | null = null
  if (values.receiver !== undefined) {
    receiver = values.receiver === 'local' ? 'local' : checkedUrl('--receiver', values.receiver)
    receiverPort = count('receiver-port', values['receiver-port'], 0)
    if (receiver !== 'local' && values['receiver-port'] === undefined) {
      throw new UsageError('--receiver-port: the local port the --receiver URL forwards to is required')
    }
  }
  return {
    baseUrl,
    key,
    checks: ids,
    yesSpend: count('yes-spend', values['yes-spend'], 0),
    json: values.json,
    receiver,
    receiverPort,
    pollIntervalMs: Math.max(100, seconds('poll-interval', values['poll-interval'], 10)),
    pollTimeoutMs: seconds('poll-timeout', values['poll-timeout'], 900),
    callbackWaitMs: seconds('callback-wait', values['callback-wait'], 120),
    timeoutMs: Math.max(1000, seconds('timeout', values.timeout, 30)),
    otherModel: values['other-model'] ?? 'kling-v2-1',
    burst: Math.min(30, count('burst', values.burst, 30))
  }
}

function listChecks (): string {
  return CHECKS.map(c => {
    const cost = c.creates > 0 ? `+${c.creates} create` : c.usesTask ? 'the probe task' : 'free'
    return `${c.id.padEnd(20)} ${c.group.padEnd(10)} ${cost}\n  ${c.assumption}\n` +
      `  relied on by: ${c.reliesOn.join('; ')}`
  }).join('\n')
}

/** The cost, said before anything is spent. */
function costStatement (opts: Options): string[] {
  const plan = planCreates(opts.checks, opts.receiver !== null, opts.otherModel)
  const { model, mode, duration, kind } = CREATE_SPEC
  if (plan.total === 0) return ['cost: nothing: the checks asked for make no create']
  const lines = [`cost: every create CometAPI accepts is billed (${kind}, ${model} unless said, ${mode}, ` +
    `${duration} s). The checks asked for make at most ${plan.total}:`,
  ...plan.items.map(i => `  ${i.check.padEnd(19)} ${i.creates} create: ${i.what}`)]
  if (opts.yesSpend === 0) {
    lines.push(`refusing to create anything without --yes-spend N; --yes-spend ${plan.total} allows all of these. ` +
      'The checks that cost nothing run.')
  } else if (opts.yesSpend < plan.total) {
    const cut = plan.items.reduce<{ left: number, skipped: string[] }>((acc, i) => {
      if (acc.left >= i.creates) return { left: acc.left - i.creates, skipped: acc.skipped }
      return { left: 0, skipped: [...acc.skipped, i.check] }
    }, { left: opts.yesSpend, skipped: [] })
    lines.push(`--yes-spend ${opts.yesSpend}: the probe stops before a create past it ` +
      `(if every create before is sent, not run: ${cut.skipped.join(', ')})`)
  } else {
    lines.push(`--yes-spend ${opts.yesSpend}: at most ${plan.total} will be sent`)
  }
  return lines
}

async function probe (opts: Options, ctx: Ctx): Promise<void> {
  const notRun = new Map<string, string>()
  const skip = (ids: string[], why: string) => { for (const id of ids) if (!notRun.has(id)) notRun.set(id, why) }
  const budgetWhy = (check: string) => `not run: ${check} makes a create, and --yes-spend ${opts.yesSpend} ` +
    (opts.yesSpend === 0 ? 'allows none' : 'is used up')
  await badKey(ctx)
  await notFound(ctx, false)
  await notFound(ctx, true)

  let receiver: CallbackReceiver | null = null
  let selfTest: string | null = null
  const callbackChecks = opts.checks.filter(id => spec(id).group === 'callbacks')
  if (opts.receiver === null) skip(callbackChecks, 'not run: needs --receiver')
  else if (callbackChecks.length > 0) {
    receiver = new CallbackReceiver(opts.receiver, opts.receiverPort ?? 0)
    ctx.scrubber.add(receiver.token)
    selfTest = await receiver.start().then(async () => await receiver?.selfTest() ?? null,
      (err: Error) => `could not listen on 127.0.0.1:${opts.receiverPort ?? 0} (${err.message})`)
    ctx.log(selfTest === null ? 'receiver: reachable through its URL' : `receiver: NOT reachable (${selfTest})`)
  }

  // The checks that read the probe task; the callback ones only with a receiver that works (else no create for them).
  const callbacksRun = receiver !== null && selfTest === null
  const reading = CHECKS.filter(c => c.usesTask && (c.group !== 'callbacks' || callbacksRun))
    .map(c => c.id).filter(id => opts.checks.includes(id))
  const tasks: ProbeTask[] = []
  let main: ProbeTask | null = null
  let lookup: ExternalLookup | null = null
  if (reading.length > 0) {
    const callbackUrl = callbacksRun ? receiver?.callbackUrl ?? null : null
    main = await createTask(ctx, 'create', baseBody(callbackUrl))
    if (main === null) skip(reading, budgetWhy('the probe task'))
    else {
      tasks.push(main)
      judgeCreate(ctx, main)
      if (main.taskId === null) skip(reading, 'not run: the probe task was not created (see create)')
      else {
        lookup = new ExternalLookup(ctx, main)
        await lookup.attempt()
        await duplicate(ctx, main)
        skip(['duplicate-external'], budgetWhy('duplicate-external'))
      }
    }
  }
  for (const check of ['masks-cfg', 'other-model'] as const) {
    if (!opts.checks.includes(check)) continue
    const body = check === 'masks-cfg' ? masksBody() : { ...baseBody(null), model_name: opts.otherModel }
    const t = await createTask(ctx, check, body)
    if (t === null) skip([check], budgetWhy(check))
    else tasks.push(t)
  }

  // The probe task is followed when a check reads more of it than its create; the other-model task never is (its
  // acceptance is the finding, and waiting for it could take the whole --poll-timeout).
  const followed = reading.some(id => id !== 'create' && id !== 'duplicate-external')
  const accepted = tasks.filter(t => t.taskId !== null &&
    (t.check === 'masks-cfg' || (t.check === 'create' && followed)))
  if (accepted.length > 0) {
    ctx.log(`polling ${accepted.length} task(s) every ${opts.pollIntervalMs / 1000} s, for at most ` +
      `${opts.pollTimeoutMs / 1000} s`)
    await pollAll(ctx, accepted, async () => { await lookup?.attempt() })
  }
  if (main?.taskId != null && followed) {
    judgePoll(ctx, main)
    judgeTimestamps(ctx, main)
    lookup?.judge()
  }
  for (const t of tasks) if (t.check !== 'create') judgeAsked(ctx, t)
  if (main?.taskId != null) {
    await checkResult(ctx, tasks.filter(t => t.check === 'create' || t.check === 'masks-cfg'))
    if (receiver !== null && callbacksRun) {
      await waitForCallbacks(ctx, receiver)
      judgeCallbacks(ctx, receiver, main, selfTest)
    }
  }
  if (receiver !== null && selfTest !== null) judgeCallbacks(ctx, receiver, null, selfTest)
  await receiver?.close()
  await rateLimit(ctx)
  for (const id of opts.checks) {
    if (!ctx.findings.some(f => f.check === id)) {
      record(ctx, id, 'inconclusive', notRun.get(id) ?? (ctx.signal.aborted ? 'not run: interrupted' : 'not run'))
    }
  }
}

async function main (): Promise<number> {
  let opts: Options | 'list'
  try {
    opts = options(process.argv.slice(2), process.env)
  } catch (err) {
    if (!(err instanceof UsageError) && !(err instanceof TypeError)) throw err
    process.stderr.write(`probe: ${err.message}\n`)
    return 2
  }
  if (opts === 'list') { process.stdout.write(listChecks() + '\n'); return 0 }

  const scrubber = new Scrubber()
  scrubber.add(opts.key)
  const log = (m: string) => { process.stderr.write(scrubber.scrub(`probe: ${m}`) + '\n') }
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  const host = new URL(opts.baseUrl).host
  log(`probe ${PROBE_VERSION} (kling-gateway ${pkg.version}) against ${host}: ${opts.checks.join(', ')}`)
  for (const line of costStatement(opts)) log(line)

  const stop = new AbortController()
  const onSignal = () => {
    if (stop.signal.aborted) process.exit(130)
    log('interrupted: finishing with what was seen (Ctrl-C again to quit at once; tasks already made are billed)')
    stop.abort()
  }
  process.on('SIGINT', onSignal)
  const date = new Date().toISOString()
  const http = new ProbeHttp({ baseUrl: opts.baseUrl, timeoutMs: opts.timeoutMs })
  const replay = new Replay()
  await replay.start()
  const budget = new Budget(opts.yesSpend)
  const ctx: Ctx = { opts, http, replay, scrubber, budget, findings: [], signal: stop.signal, log }
  try {
    await probe(opts, ctx)
  } finally {
    await http.close()
    await replay.close()
    process.off('SIGINT', onSignal)
  }
  const planned = planCreates(opts.checks, opts.receiver !== null, opts.otherModel).total
  const header = { date, baseUrlHost: host, spend: { allowed: opts.yesSpend, made: ctx.budget.made, planned } }
  const render = opts.json ? renderJson : renderText
  process.stdout.write(render(header, ctx.findings, scrubber))
  return ctx.findings.some(f => f.verdict === 'contradicted') ? 1 : 0
}

process.exitCode = await main()
