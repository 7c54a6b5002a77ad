/**
 * The probe task: its create, its polling, its timestamps and its look-up by external id (the other creates are in
 * asked.ts). Every create takes one from the budget first; a check whose create the budget refuses is reported as
 * not run.
 */
import { randomUUID } from 'node:crypto'
import type { UpstreamTask } from '../../src/upstream/client.ts'
import { CREATE_SPEC } from './catalog.ts'
import {
  answered, auth, CREATE_PATH, errorShape, isObj, message, queryPath, record, sleep, wants, type Ctx, type Evidence
} from './context.ts'
import type { Exchange } from './http.ts'
import { pictureBase64 } from './images.ts'
import { describeReading, type Reading } from './replay.ts'
import { cut, secretParamValues } from './scrub.ts'

export interface Seen { status: string, raw: unknown, atMs: number, exchange: Exchange }

export interface ProbeTask {
  check: string
  body: Record<string, unknown>
  externalTaskId: string
  sentAt: number
  create: Exchange
  reading: Reading
  taskId: string | null
  /** Each status the first time it was seen, in order. */
  seen: Seen[]
  queries: number
  /** Answers that were not the task: "no such task" or errors, the first of each kept. */
  misses: Array<{ exchange: Exchange, reading: Reading, atMs: number }>
  problems: string[]
  terminal: { task: UpstreamTask, atMs: number, exchange: Exchange } | null
}

const RANK: Record<string, number> = { submitted: 0, processing: 1, succeed: 2, failed: 2 }
const KLING_WORDS = new Set(Object.keys(RANK))

/** The probe's create body: the cheapest task, two generated pictures, our external id and callback. */
export function baseBody (callbackUrl: string | null): Record<string, unknown> {
  return {
    model_name: CREATE_SPEC.model,
    mode: CREATE_SPEC.mode,
    duration: CREATE_SPEC.duration,
    image_list: [{ image: pictureBase64(0) }, { image: pictureBase64(1) }],
    prompt: 'kling-gateway probe: a slow pan from a yellow sun to a blue moon',
    external_task_id: randomUUID(),
    ...(callbackUrl !== null && { callback_url: callbackUrl })
  }
}

/** One create, if the budget allows it; null when it does not (nothing was sent). */
export async function createTask (ctx: Ctx, check: string, body: Record<string, unknown>): Promise<ProbeTask | null> {
  if (!ctx.budget.take()) return null
  const externalTaskId = String(body.external_task_id)
  ctx.log(`${check}: create ${ctx.budget.made} of at most ${ctx.budget.allowed} (external id ${externalTaskId})`)
  const sentAt = Date.now()
  const create = await ctx.http.send('POST', CREATE_PATH, auth(ctx), JSON.stringify(body))
  const reading = await ctx.replay.create(create, externalTaskId)
  const taskId = reading.kind === 'task' ? reading.task.taskId : null
  if (taskId !== null) ctx.log(`${check}: task ${taskId}`)
  const task: ProbeTask = {
    check,
    body,
    externalTaskId,
    sentAt,
    create,
    reading,
    taskId,
    seen: [],
    queries: 0,
    misses: [],
    problems: [],
    terminal: null
  }
  if (reading.kind === 'task') note(task, reading.task, create)
  return task
}

/** Records a status as seen (and a backward move as a problem). */
function note (t: ProbeTask, up: UpstreamTask, ex: Exchange): void {
  const data = isObj(ex.json) && isObj(ex.json.data) ? ex.json.data : {}
  const last = t.seen.at(-1)
  if (last !== undefined && RANK[up.status] < RANK[last.status]) {
    t.problems.push(`moved back from ${last.status} to ${up.status}`)
  }
  if (last?.status !== up.status) {
    t.seen.push({ status: up.status, raw: data.task_status, atMs: Date.now() - t.sentAt, exchange: ex })
  }
  if (!KLING_WORDS.has(String(data.task_status))) {
    const word = data.task_status === undefined
      ? 'no data.task_status'
      : `data.task_status ${JSON.stringify(data.task_status)}`
    if (!t.problems.some(p => p.startsWith(word))) t.problems.push(`${word} (parseTask read ${up.status})`)
  }
}

/** Secret parts of result URLs (signatures) are scrubbed wherever the URL is printed, not only where it is shown. */
function guardUrls (ctx: Ctx, up: UpstreamTask): void {
  for (const v of up.videos) for (const value of secretParamValues(v.url)) ctx.scrubber.add(value)
}

/** One query of a task by its id. */
async function pollOnce (ctx: Ctx, t: ProbeTask): Promise<void> {
  if (t.taskId === null) return
  const ex = await ctx.http.send('GET', queryPath(t.taskId), auth(ctx))
  t.queries++
  const reading = await ctx.replay.query(ex)
  if (reading.kind !== 'task') {
    if (!t.misses.some(m => m.reading.kind === reading.kind)) {
      t.misses.push({ exchange: ex, reading, atMs: Date.now() - t.sentAt })
    }
    const unreadable = 'an answer parseTask could not read'
    if (reading.kind === 'error' && reading.code === 'UPSTREAM_BAD_RESPONSE' && !t.problems.includes(unreadable)) {
      t.problems.push(unreadable)
    }
    return
  }
  guardUrls(ctx, reading.task)
  note(t, reading.task, ex)
  if (reading.task.status === 'succeed' || reading.task.status === 'failed') {
    t.terminal = { task: reading.task, atMs: Date.now() - t.sentAt, exchange: ex }
    ctx.log(`${t.check}: task ${t.taskId} ${reading.task.status} after ${Math.round(t.terminal.atMs / 1000)} s`)
  }
}

/** Polls every accepted task until each is terminal or the bound passes; `between` runs after every round. */
export async function pollAll (ctx: Ctx, tasks: ProbeTask[], between: () => Promise<void>): Promise<void> {
  const deadline = Date.now() + ctx.opts.pollTimeoutMs
  const open = () => tasks.filter(t => t.taskId !== null && t.terminal === null)
  while (open().length > 0 && Date.now() < deadline && !ctx.signal.aborted) {
    await Promise.all(open().map(async t => await pollOnce(ctx, t)))
    await between()
    const pause = Math.min(ctx.opts.pollIntervalMs, Math.max(0, deadline - Date.now()))
    if (open().length > 0) await sleep(pause, ctx.signal)
  }
}

export const secs = (ms: number): string => `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`

/** The `create` finding: every fact of the answer, and whether the adapter took it. */
export function judgeCreate (ctx: Ctx, t: ProbeTask): void {
  const ex = t.create
  const evidence: Evidence[] = [{ title: 'create', exchange: ex, reading: t.reading }]
  if (t.reading.kind === 'no-answer') {
    const summary = `${answered(ex)}: a task may have been made all the same (external id ${t.externalTaskId})`
    return record(ctx, 'create', 'inconclusive', summary, evidence)
  }
  if (t.reading.kind !== 'task') {
    const why = `${answered(ex)}, ${errorShape(ex.json)}, ${JSON.stringify(cut(message(ex.json) ?? '', 100))}`
    return record(ctx, 'create', 'contradicted', `refused: ${why}; ${describeReading(t.reading)}`, evidence)
  }
  const json = isObj(ex.json) ? ex.json : {}
  const data = isObj(json.data) ? json.data : {}
  const raw = /"task_id"\s*:\s*("?)([^",}\s]*)/.exec(ex.text)
  const idType = raw === null
    ? 'absent'
    : raw[1] === '"'
      ? `a string of ${raw[2].length}${/^\d+$/.test(raw[2]) ? ' digits' : ' characters, not all digits'}`
      : `a JSON number (${raw[2].length} digits)`
  const facts = [
    answered(ex),
    `code ${JSON.stringify(json.code)}`,
    `message ${json.message === undefined ? 'absent' : JSON.stringify(cut(String(json.message), 60))}`,
    `task_id ${idType}`,
    `task_status ${JSON.stringify(data.task_status)}`,
    `request_id ${typeof json.request_id === 'string' ? 'present' : 'absent'}`
  ]
  const off = [
    json.code !== 0 && 'code is not the number 0',
    typeof json.message !== 'string' && 'no message',
    !(raw?.[1] === '"' && /^\d{16,}$/.test(raw[2])) && 'task_id is not a numeric string',
    data.task_status !== 'submitted' && 'task_status is not "submitted"'
  ].filter((x): x is string => typeof x === 'string')
  const summary = facts.join(', ') + (off.length > 0 ? `; ${off.join(', ')}; the adapter still takes it` : '')
  record(ctx, 'create', off.length === 0 ? 'confirmed' : 'contradicted', summary, evidence)
}

/** The `poll` finding. */
export function judgePoll (ctx: Ctx, t: ProbeTask): void {
  const path = t.seen.map(s => `${s.status} at ${secs(s.atMs)}`).join(' → ')
  const misses = t.misses.map(m => `${describeReading(m.reading)} at ${secs(m.atMs)}`).join('; ')
  const summary = `${path === '' ? 'no status read' : path} (${t.queries} queries)` +
    (misses === '' ? '' : `; also ${misses}`) + (t.problems.length > 0 ? `; ${t.problems.join('; ')}` : '')
  const evidence: Evidence[] = [
    ...t.seen.map(s => ({
      title: s.exchange === t.create ? `the create's answer (${s.status})` : `first answer with ${s.status}`,
      exchange: s.exchange
    })),
    ...t.misses.map(m => ({ title: 'an answer that was not the task', exchange: m.exchange, reading: m.reading }))
  ]
  if (t.problems.length > 0) return record(ctx, 'poll', 'contradicted', summary, evidence)
  if (t.terminal === null) {
    const bound = `not terminal within --poll-timeout ${secs(ctx.opts.pollTimeoutMs)}`
    // Never seen again and refused for good (or "no such task" for its own id): the query is wrong, not slow.
    const refused = t.misses.some(m => m.reading.kind === 'not-found' ||
      (m.reading.kind === 'error' && !m.reading.retryable))
    const verdict = t.seen.every(s => s.exchange === t.create) && refused ? 'contradicted' : 'inconclusive'
    return record(ctx, 'poll', verdict, `${bound}: ${summary}`, evidence)
  }
  record(ctx, 'poll', 'confirmed', summary, evidence)
}

/** The unit of one timestamp value, and how far it is from `near` (our clock) in ms. */
function unit (v: unknown, near: number): { unit: string, offMs: number | null } {
  if (v === undefined || v === null) return { unit: 'absent', offMs: null }
  if (typeof v !== 'number') return { unit: `a ${typeof v}`, offMs: null }
  if (v > 1e12 && v < 1e14) return { unit: 'ms', offMs: v - near }
  if (v > 1e9 && v < 1e11) return { unit: 's', offMs: v * 1000 - near }
  return { unit: 'neither ms nor s', offMs: null }
}

/** The `timestamps` finding, from the create's answer and the first answer of each status. */
export function judgeTimestamps (ctx: Ctx, t: ProbeTask): void {
  const answers = [{ where: 'create', ex: t.create, at: t.sentAt },
    ...t.seen.filter(s => s.exchange !== t.create)
      .map(s => ({ where: s.status, ex: s.exchange, at: t.sentAt + s.atMs }))]
  const facts: string[] = []
  const units = new Set<string>()
  let far = false
  for (const a of answers) {
    const data = isObj(a.ex.json) && isObj(a.ex.json.data) ? a.ex.json.data : {}
    for (const field of ['created_at', 'updated_at']) {
      const u = unit(data[field], field === 'created_at' ? t.sentAt : a.at)
      units.add(u.unit)
      if (u.offMs !== null && Math.abs(u.offMs) > 15 * 60_000) far = true
      const off = u.offMs === null ? '' : `, ${u.offMs >= 0 ? '+' : ''}${secs(u.offMs)} from our clock`
      if (a.where === 'create' || field === 'updated_at') {
        facts.push(`${a.where} ${field} ${JSON.stringify(data[field])} (${u.unit}${off})`)
      }
    }
  }
  const summary = facts.join('; ')
  if (units.size === 1 && units.has('absent')) {
    const none = `no timestamps in any answer (the code uses its own clock): ${summary}`
    return record(ctx, 'timestamps', 'contradicted', none)
  }
  const onlyMs = [...units].every(u => u === 'ms' || u === 'absent')
  if (onlyMs && !far) return record(ctx, 'timestamps', 'confirmed', summary)
  const copes = units.has('s') ? '; toMs reads seconds too, but docs/DESIGN.md says ms' : ''
  record(ctx, 'timestamps', 'contradicted', `${summary}${far ? '; more than 15 min from our clock' : ''}${copes}`)
}

/** Looks the task up by its external id; called right after the create, then after each poll round until found. */
export class ExternalLookup {
  readonly tries: Array<{ exchange: Exchange, reading: Reading, atMs: number }> = []
  found = false

  constructor (private readonly ctx: Ctx, private readonly t: ProbeTask) {}

  async attempt (): Promise<void> {
    if (this.found || this.tries.length >= 12 || this.t.taskId === null || !wants(this.ctx, 'lookup-external')) return
    const ex = await this.ctx.http.send('GET', queryPath(this.t.externalTaskId), auth(this.ctx))
    const reading = await this.ctx.replay.query(ex)
    this.tries.push({ exchange: ex, reading, atMs: Date.now() - this.t.sentAt })
    this.found = reading.kind === 'task'
  }

  judge (): void {
    const first = this.tries[0]
    if (first === undefined) return
    const hit = this.tries.find(x => x.reading.kind === 'task')
    const evidence: Evidence[] = [{ title: 'first look-up', exchange: first.exchange, reading: first.reading },
      ...(hit !== undefined && hit !== first ? [{ title: 'first look-up that found it', exchange: hit.exchange }] : [])]
    const tried = `${this.tries.length} look-up${this.tries.length === 1 ? '' : 's'}`
    if (hit === undefined) {
      const over = secs(this.tries.at(-1)?.atMs ?? 0)
      const summary = `not found in ${tried} over ${over}: ${answered(first.exchange)}, ` +
        `${errorShape(first.exchange.json)}; ${describeReading(first.reading)}; SubmitJobs.process would send again ` +
        'after the grace, and only the duplicate refusal would keep it from paying twice'
      return record(this.ctx, 'lookup-external', 'contradicted', summary, evidence)
    }
    const same = hit.reading.kind === 'task' && hit.reading.task.taskId === this.t.taskId
    const when = hit === first ? 'at once' : `after ${secs(hit.atMs)} (${tried})`
    if (!same) {
      const other = hit.reading.kind === 'task' ? hit.reading.task.taskId : '?'
      return record(this.ctx, 'lookup-external', 'contradicted', `found another task (${other}) ${when}`, evidence)
    }
    const late = hit.atMs > 30_000
    const summary = `found task ${this.t.taskId} ${when}, ${answered(hit.exchange)}` +
      (late ? '; later than SUBMIT_UNCONFIRMED_GRACE_MS\'s default (30 s)' : '')
    record(this.ctx, 'lookup-external', late ? 'contradicted' : 'confirmed', summary, evidence)
  }
}
