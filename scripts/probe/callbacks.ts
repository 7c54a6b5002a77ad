/**
 * The callback checks: a receiver of our own (on a local port a public https URL forwards to, or on loopback for a
 * local upstream), given to CometAPI as the probe task's callback_url with a token in its query string as the
 * gateway's own (`/callbacks/kling?token=…`). It answers 500 to the first callback on purpose, to see whether one is
 * sent again, and 200 to the rest. The token is a secret of the run: it is scrubbed from everything printed.
 */
import { randomBytes } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { parseJsonKeepingIds, parseTask } from '../../src/upstream/schemas.ts'
import { isObj, record, sleep, type Ctx, type Evidence } from './context.ts'
import { showBody } from './scrub.ts'
import type { ProbeTask } from './tasks.ts'

const MAX_BODY = 256 * 1024
const SELF_TEST = '/probe-self-test'

export interface Hit { path: string, headers: Record<string, string>, body: string, at: number, answer: number }

export class CallbackReceiver {
  readonly hits: Hit[] = []
  readonly token: string
  readonly runId = randomBytes(4).toString('hex')
  #selfTests = 0
  #server: Server | null = null
  #base: string

  /** `base` is the public URL (or `local`); `port` the local port it forwards to (0: any, with `local`). */
  constructor (base: string, private readonly port: number) {
    this.#base = base.replace(/\/+$/, '')
    this.token = `probe-${this.runId}.${randomBytes(32).toString('base64url')}`
  }

  /** The callback_url CometAPI is given. */
  get callbackUrl (): string {
    return `${this.#base}/callbacks/kling?token=${this.token}&probe=${this.runId}`
  }

  async start (): Promise<void> {
    const server = createServer((req, res) => {
      const chunks: Buffer[] = []
      let size = 0
      req.on('data', (c: Buffer) => { size += c.length; if (size <= MAX_BODY) chunks.push(c) })
      req.on('end', () => {
        if ((req.url ?? '').startsWith(SELF_TEST)) {
          this.#selfTests++
          res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
          return
        }
        // The first callback is refused on purpose: what happens next says whether callbacks are retried.
        const answer = this.hits.length === 0 ? 500 : 200
        const headers = Object.fromEntries(Object.entries(req.headers).map(([k, v]) =>
          [k, Array.isArray(v) ? v.join(', ') : String(v)]))
        const body = Buffer.concat(chunks).toString('utf8')
        this.hits.push({ path: req.url ?? '', headers, body, at: Date.now(), answer })
        const reply = answer === 500 ? '{"error":"probe: answered 500 on purpose"}' : '{"ok":true}'
        res.writeHead(answer, { 'content-type': 'application/json' }).end(reply)
      })
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.port, '127.0.0.1', resolve)
    })
    this.#server = server
    if (this.#base === 'local') this.#base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  }

  /** Null when a POST to the public URL reaches this receiver; else why not. */
  async selfTest (): Promise<string | null> {
    const before = this.#selfTests
    try {
      const res = await request(`${this.#base}${SELF_TEST}?probe=${this.runId}`, {
        method: 'POST', body: '{}', headers: { 'content-type': 'application/json' }, signal: AbortSignal.timeout(15_000)
      })
      await res.body.dump()
      if (this.#selfTests > before) return null
      return `HTTP ${res.statusCode} from something other than the receiver`
    } catch (err) {
      return err instanceof Error ? err.message : String(err)
    }
  }

  async close (): Promise<void> {
    const server = this.#server
    if (server !== null) await new Promise<void>(resolve => server.close(() => resolve()))
  }
}

/** Waits `callbackWaitMs` after the polling ended and at least as long after the first callback (the one refused). */
export async function waitForCallbacks (ctx: Ctx, receiver: CallbackReceiver): Promise<void> {
  const wait = ctx.opts.callbackWaitMs
  ctx.log(`callbacks: waiting ${Math.round(wait / 1000)} s for callbacks and a retry of the one answered 500`)
  const start = Date.now()
  while (true) {
    const first = receiver.hits[0]?.at
    const until = Math.max(start + wait, first === undefined ? 0 : first + wait)
    if (Date.now() >= until || ctx.signal.aborted) return
    await sleep(Math.min(250, until - Date.now()), ctx.signal)
  }
}

const CALLBACK_CHECKS = ['callback-count', 'callback-body', 'callback-token', 'callback-headers', 'callback-retry']

function shapeOf (json: unknown): string {
  if (!isObj(json)) return json === undefined ? 'not JSON' : 'JSON, not an object'
  if ('task_id' in json && 'task_status' in json && !isObj(json.data)) return 'Kling\'s flat task object'
  if ('code' in json && isObj(json.data)) return 'an envelope {code, message, data: {…}}'
  if ('id' in json && 'status' in json) return 'Kling\'s new-standard task {id, status, …}'
  return `another object (keys: ${Object.keys(json).slice(0, 8).join(', ')})`
}

/** Every callback finding, from what the receiver saw of the probe task. */
export function judgeCallbacks (ctx: Ctx, receiver: CallbackReceiver, t: ProbeTask | null, selfTest: string | null):
void {
  if (selfTest !== null || t === null) {
    const why = `not run: the receiver URL did not reach the receiver (${selfTest ?? '?'})`
    for (const id of CALLBACK_CHECKS) record(ctx, id, 'inconclusive', why)
    return
  }
  const secs = (at: number) => `${((at - t.sentAt) / 1000).toFixed(1)} s`
  const hits = receiver.hits.map(h => {
    let json: unknown
    try { json = parseJsonKeepingIds(h.body) } catch {}
    return { ...h, json, up: parseTask(json) }
  })
  const evidence: Evidence[] = hits.slice(0, 6).map((h, i) => ({
    title: `callback ${i + 1}`,
    lines: [`POST ${h.path} at ${secs(h.at)} after the create, answered ${h.answer}`,
      ...Object.entries(h.headers).map(([k, v]) => `${k}: ${v}`), '', showBody(h.body)]
  }))
  const waitMs = ctx.opts.callbackWaitMs
  const waited = `${(waitMs / 1000).toFixed(waitMs < 10_000 ? 1 : 0)} s`
  if (hits.length === 0) {
    const verdict = t.terminal === null ? 'inconclusive' : 'contradicted'
    const why = t.terminal === null
      ? 'no callback, and the task did not end within --poll-timeout'
      : `no callback within ${waited} after the task ended, though the receiver URL reached the receiver`
    record(ctx, 'callback-count', verdict, why)
    for (const id of CALLBACK_CHECKS.slice(1)) record(ctx, id, 'inconclusive', `not run: ${why}`)
    return
  }

  const statuses = hits.map(h => `${h.up?.status ?? 'unreadable'} at ${secs(h.at)} (answered ${h.answer})`)
  const terminal = hits.some(h => h.up?.status === 'succeed' || h.up?.status === 'failed')
  const distinct = new Set(hits.map(h => h.body)).size
  const count = `${hits.length} callback${hits.length === 1 ? '' : 's'} (${distinct} distinct bodies): ` +
    statuses.join(', ')
  const see: Evidence[] = [{ title: 'The callbacks as they arrived are in the evidence of callback-count' }]
  record(ctx, 'callback-count', terminal ? 'confirmed' : 'contradicted', terminal ? count : `${count}; none terminal`,
    evidence)

  const first = hits[0]
  const shape = shapeOf(first.json)
  const ours = first.up !== null && first.up.taskId === t.taskId &&
    (first.up.externalTaskId === null || first.up.externalTaskId === t.externalTaskId)
  const read = first.up === null
    ? 'parseTask cannot read it (routes/callbacks.ts would answer 400)'
    : `parseTask reads task ${first.up.taskId} (${first.up.status}), ` +
      `external id ${first.up.externalTaskId ?? 'absent'}` +
      (ours ? ', ours' : ', NOT ours (routes/callbacks.ts would answer 400)')
  const bodyOk = shape === 'Kling\'s flat task object' && ours
  record(ctx, 'callback-body', bodyOk ? 'confirmed' : 'contradicted',
    `${shape}, content-type ${first.headers['content-type'] ?? 'absent'}; ${read}`, evidence.slice(0, 1))

  const intact = hits.filter(h => {
    const q = new URL(h.path, 'http://receiver').searchParams
    return q.get('token') === receiver.token && q.get('probe') === receiver.runId
  }).length
  const tokenSummary = intact === hits.length
    ? `the query string arrived as sent on all ${hits.length} (token=…&probe=${receiver.runId})`
    : `${hits.length - intact} of ${hits.length} arrived without our query string as sent: first seen ${first.path}`
  record(ctx, 'callback-token', intact === hits.length ? 'confirmed' : 'contradicted', tokenSummary, see)

  const names = [...new Set(hits.flatMap(h => Object.keys(h.headers)))].sort()
  const signed = names.filter(n => /signature|^webhook-/i.test(n))
  const headerSummary = `headers: ${names.join(', ')}; user-agent ${first.headers['user-agent'] ?? 'absent'}`
  if (signed.length > 0) {
    record(ctx, 'callback-headers', 'inconclusive',
      `${headerSummary}; signed (${signed.join(', ')}): whose key signs them is for CometAPI to say`, see)
  } else {
    record(ctx, 'callback-headers', 'confirmed', `${headerSummary}; no signature header`, see)
  }

  const sameAsFirst = (h: typeof first) => h.body === first.body ||
    (h.up !== null && first.up !== null && h.up.status === first.up.status && h.up.updatedAt === first.up.updatedAt)
  const retries = hits.slice(1).filter(sameAsFirst)
  if (retries.length > 0) {
    const after = retries.map(r => `${((r.at - first.at) / 1000).toFixed(1)} s`).join(', ')
    record(ctx, 'callback-retry', 'confirmed', `the callback answered 500 came again ${retries.length} time(s), ` +
      `after ${after}`, see)
  } else {
    record(ctx, 'callback-retry', 'contradicted', `the callback answered 500 (${first.up?.status ?? 'unreadable'}) ` +
      `was not sent again within ${waited}: a callback we refuse is lost, and reconciliation has to find the change`,
    see)
  }
}
