/**
 * The checks that cost nothing: a wrong key, ids no task has, and a short burst of such queries for the rate limit.
 * None of them can make a task: their creates carry no body a task could be made of, their queries name no task.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import {
  answered, auth, CREATE_PATH, errorShape, message, queryPath, record, unknownTaskId, wants, type Ctx, type Evidence
} from './context.ts'
import { relevantHeaders, type Exchange } from './http.ts'
import { describeReading } from './replay.ts'
import { cut } from './scrub.ts'

const quoted = (s: string | null): string => s === null ? 'no message' : `"${cut(s, 100)}"`

/** A wrong key on a query and on a create of `{}` (not a task even if the key were taken). */
export async function badKey (ctx: Ctx): Promise<void> {
  if (!wants(ctx, 'bad-key')) return
  ctx.log('bad-key: a query and an empty create with a made-up key')
  const wrong = auth(ctx, `sk-probe${randomBytes(24).toString('base64url')}`)
  const query = await ctx.http.send('GET', queryPath(unknownTaskId()), wrong)
  const create = await ctx.http.send('POST', CREATE_PATH, wrong, '{}')
  const q = await ctx.replay.query(query)
  const c = await ctx.replay.create(create, null)
  const evidence: Evidence[] = [{ title: 'query', exchange: query, reading: q },
    { title: 'create of {}', exchange: create, reading: c }]
  const part = (name: string, ex: Exchange, reading: typeof q) =>
    `${name}: ${answered(ex)}, ${errorShape(ex.json)}; ${describeReading(reading)}`
  const summary = `${part('query', query, q)}; ${part('create', create, c)}`
  if (q.kind === 'no-answer' || c.kind === 'no-answer') return record(ctx, 'bad-key', 'inconclusive', summary, evidence)
  const final = (r: typeof q) => r.kind === 'error' && !r.retryable && !r.maybeCreated
  const shaped = (ex: Exchange) => ex.status === 401 && errorShape(ex.json).startsWith('CometAPI gateway shape')
  const ok = final(q) && final(c) && shaped(query) && shaped(create)
  let impact = ''
  if (!final(c)) impact = '; a create with a wrong key would not fail at once: SubmitJobs.process retries it'
  else if (!ok) impact = '; the adapter still takes it as final'
  record(ctx, 'bad-key', ok ? 'confirmed' : 'contradicted', summary + impact, evidence)
}

/** A query for an id no task has: a numeric task id, or a fresh UUID as an external id. */
export async function notFound (ctx: Ctx, external: boolean): Promise<void> {
  const check = external ? 'not-found-external' : 'not-found-id'
  if (!wants(ctx, check)) return
  const id = external ? randomUUID() : unknownTaskId()
  ctx.log(`${check}: a query for ${external ? 'external id' : 'task id'} ${id}`)
  const ex = await ctx.http.send('GET', queryPath(id), auth(ctx))
  const reading = await ctx.replay.query(ex)
  const evidence: Evidence[] = [{ title: `query of ${id}`, exchange: ex, reading }]
  const summary = `${answered(ex)}, ${errorShape(ex.json)}, ${quoted(message(ex.json))}; ${describeReading(reading)}`
  if (reading.kind === 'no-answer') return record(ctx, check, 'inconclusive', summary, evidence)
  if (reading.kind === 'not-found') return record(ctx, check, 'confirmed', summary, evidence)
  if (reading.kind === 'task') {
    return record(ctx, check, 'contradicted', `${summary}; a task for an id that cannot exist`, evidence)
  }
  const impact = external
    ? reading.retryable
      ? '; the look-up after an uncertain create would be retried instead of waiting out the grace'
      : '; the look-up after an uncertain create would hold the task for an operator (SubmitJobs.process) ' +
        'instead of waiting out the grace'
    : '; reconciliation counts it unknown either way, but query() throws instead of returning null'
  record(ctx, check, 'contradicted', summary + impact, evidence)
}

/** At most `burst` (≤ 30) queries of unknown ids, a few at a time, stopping at the first 429. */
export async function rateLimit (ctx: Ctx): Promise<void> {
  if (!wants(ctx, 'rate-limit')) return
  const limit = Math.min(30, Math.max(1, ctx.opts.burst))
  ctx.log(`rate-limit: up to ${limit} queries of unknown ids, stopping at the first 429`)
  const started = Date.now()
  const statuses = new Map<string, number>()
  const rateHeaders = new Map<string, string>()
  let sent = 0
  let first: Exchange | null = null
  let limited: Exchange | null = null
  const worker = async () => {
    while (sent < limit && limited === null) {
      sent++
      const ex = await ctx.http.send('GET', queryPath(unknownTaskId()), auth(ctx))
      first ??= ex
      const key = ex.status === null ? (ex.error ?? 'no answer') : String(ex.status)
      statuses.set(key, (statuses.get(key) ?? 0) + 1)
      for (const [name, value] of Object.entries(ex.headers)) if (/ratelimit/i.test(name)) rateHeaders.set(name, value)
      if (ex.status === 429) limited ??= ex
    }
  }
  await Promise.all(Array.from({ length: 5 }, worker))
  const tally = [...statuses].map(([s, n]) => `${n} × ${s}`).join(', ')
  const seen = rateHeaders.size === 0
    ? 'no rate-limit headers'
    : [...rateHeaders].map(([k, v]) => `${k}: ${v}`).join(', ')
  const spent = `${sent} queries in ${Date.now() - started} ms (${tally}); ${seen}`
  const found = limited as Exchange | null
  if (found === null) {
    const evidence: Evidence[] = first === null ? [] : [{ title: 'first answer of the burst', exchange: first }]
    return record(ctx, 'rate-limit', 'inconclusive', `no 429: ${spent}`, evidence)
  }
  const reading = await ctx.replay.query(found)
  const retryAfter = relevantHeaders(found.headers)['retry-after']
  const evidence: Evidence[] = [{ title: 'the first 429', exchange: found, reading }]
  const summary = `429 after ${spent}; Retry-After ${retryAfter ?? 'absent'}, ${errorShape(found.json)}; ` +
    describeReading(reading)
  if (reading.kind !== 'error' || !reading.retryable) {
    return record(ctx, 'rate-limit', 'contradicted', `${summary}; a 429 the submit queue does not retry`, evidence)
  }
  if (reading.retryAfterMs === null) {
    const impact = '; without Retry-After the submit queue backs off on its own schedule (backoffDelay)'
    return record(ctx, 'rate-limit', 'contradicted', summary + impact, evidence)
  }
  record(ctx, 'rate-limit', 'confirmed', summary, evidence)
}
