/**
 * The kling adapter (Kling's own API) against the real simulator over loopback HTTP, which checks its JWTs with the
 * same keys: the paths per kind, the token (its claims, its cache, its renewal), Kling's error table, and the
 * secrets kept out of every error. Then end to end through the real app and Redis with UPSTREAM=kling. No mocks: a
 * tiny node:http server stands in only where a request must be read as it was sent.
 */
import { describe, it, expect, beforeAll, afterAll, beforeEach } from 'vitest'
import { createHmac, randomBytes, randomUUID } from 'node:crypto'
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { inspect } from 'node:util'
import { Simulator } from '../simulator/app.ts'
import type { VideoKind } from '../src/domain/kinds.ts'
import type { TaskView } from '../src/domain/task.ts'
import { UpstreamError } from '../src/upstream/client.ts'
import { KlingAdapter } from '../src/upstream/kling.ts'
import { auth, KLING_ENV, harnessPerTest } from './helpers/harness.ts'
import { createTask, waitFor } from './helpers/tasks.ts'

const AK = 'ak-kling-unit-' + randomBytes(6).toString('hex')
const SK = 'sk-kling-unit-' + randomBytes(12).toString('hex')
const MINUTE = 60_000
const KINDS: VideoKind[] = ['multi-image2video', 'image2video', 'text2video']

const bodyOf = (kind: VideoKind, ext = randomUUID()): Record<string, unknown> => ({
  ...(kind === 'multi-image2video' && {
    image_list: [{ image: 'https://example.com/a.png' }, { image: 'https://example.com/b.png' }]
  }),
  ...(kind === 'image2video' && { image: 'https://example.com/a.png' }),
  prompt: 'a lighthouse in a storm',
  model_name: 'kling-v1-6',
  external_task_id: ext
})

/** Every error a call threw, checked for the secrets at the end. */
const seen: unknown[] = []
async function failure (call: Promise<unknown>): Promise<UpstreamError> {
  try {
    await call
  } catch (err) {
    seen.push(err)
    expect(err).toBeInstanceOf(UpstreamError)
    return err as UpstreamError
  }
  throw new Error('expected the call to fail')
}

const decode = (part: string): Record<string, unknown> => JSON.parse(Buffer.from(part, 'base64url').toString())

/** A server that answers what a test says and keeps the headers it was sent. */
class Capture {
  server: Server
  url = ''
  headers: IncomingHttpHeaders[] = []
  answer: (headers: IncomingHttpHeaders) => { status: number, body: unknown } = () => ({ status: 500, body: {} })

  constructor () {
    this.server = createServer((req, res) => {
      req.resume()
      req.on('end', () => {
        this.headers.push(req.headers)
        const { status, body } = this.answer(req.headers)
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
      })
    })
  }

  async listen (): Promise<void> {
    await new Promise<void>(resolve => this.server.listen(0, '127.0.0.1', resolve))
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`
  }

  async close (): Promise<void> {
    this.server.closeAllConnections()
    await new Promise<void>(resolve => this.server.close(() => resolve()))
  }
}

describe('KlingAdapter against the simulator', () => {
  const sim = new Simulator({ klingAccessKey: AK, klingSecretKey: SK, auto: false })
  const capture = new Capture()
  let offset = 0
  const clock = () => Date.now() + offset
  const adapters: KlingAdapter[] = []
  const adapter = (over: Partial<ConstructorParameters<typeof KlingAdapter>[0]> = {}): KlingAdapter => {
    const a = new KlingAdapter({ baseUrl: sim.baseUrl, accessKey: AK, secretKey: SK, timeoutMs: 3000, clock, ...over })
    adapters.push(a)
    return a
  }

  beforeAll(async () => { await sim.listen(); await capture.listen() })
  beforeEach(() => { offset = 0; sim.reset() })
  afterAll(async () => {
    for (const a of adapters) await a.close()
    await capture.close()
    await sim.close()
  })

  it.each(KINDS)('%s: creates on /v1/videos/<kind> with a JWT; queries by either id, there only', async (kind) => {
    const kling = adapter()
    const ext = randomUUID()
    const created = await kling.create(kind, bodyOf(kind, ext))
    expect(created).toMatchObject({ status: 'submitted', externalTaskId: ext })
    expect(sim.tasks.get(created.taskId)).toMatchObject({ kind, api: 'kling', external_task_id: ext })
    expect((await kling.query(kind, created.taskId))?.taskId).toBe(created.taskId)
    sim.setStatus(created.taskId, 'succeed')
    const done = await kling.query(kind, ext)
    const videos = [{ url: expect.stringContaining(created.taskId) }]
    expect(done).toMatchObject({ taskId: created.taskId, status: 'succeed', videos })
    const other = KINDS.find(k => k !== kind) as VideoKind
    expect(await kling.query(other, created.taskId)).toBeNull()
    expect(sim.tokensSeen.length).toBe(4)
  })

  it('signs HS256 over {iss: access key, exp: now + 30 min, nbf: now - 5 s} with the secret key', async () => {
    const kling = adapter({ baseUrl: capture.url })
    const accepted = { code: 0, message: 'SUCCEED', data: { task_id: '861', task_status: 'submitted' } }
    capture.answer = () => ({ status: 200, body: accepted })
    const before = Math.floor(Date.now() / 1000)
    await kling.create('text2video', bodyOf('text2video'))
    const after = Math.floor(Date.now() / 1000)
    const header = capture.headers.at(-1)?.authorization ?? ''
    expect(header).toMatch(/^Bearer [\w-]+\.[\w-]+\.[\w-]+$/)
    const [h, p, signature] = header.slice(7).split('.')
    expect(decode(h)).toEqual({ alg: 'HS256', typ: 'JWT' })
    const claims = decode(p) as { iss: string, exp: number, nbf: number }
    expect(Object.keys(claims).sort()).toEqual(['exp', 'iss', 'nbf'])
    expect(claims.iss).toBe(AK)
    expect(claims.exp).toBeGreaterThanOrEqual(before + 1800)
    expect(claims.exp).toBeLessThanOrEqual(after + 1800)
    expect(claims.exp - claims.nbf).toBe(1805)
    expect(signature).toBe(createHmac('sha256', SK).update(`${h}.${p}`).digest('base64url'))
    expect(capture.headers.at(-1)?.['content-type']).toBe('application/json')
  })

  it('keeps one token while it has more than 5 minutes left, then signs a new one before it expires', async () => {
    const kling = adapter()
    offset = -28 * MINUTE // the first token has 2 minutes left by the simulator's clock
    const ext = randomUUID()
    await kling.create('text2video', bodyOf('text2video', ext))
    offset = -27 * MINUTE
    await kling.query('text2video', ext)
    expect(sim.tokensSeen).toHaveLength(2)
    expect(sim.tokensSeen[1].exp).toBe(sim.tokensSeen[0].exp) // cached: 27 minutes left by the adapter's clock
    offset = 0 // now 2 minutes left: renewed before it can expire
    await kling.query('text2video', ext)
    await kling.query('text2video', ext)
    const [first, , renewed, again] = sim.tokensSeen.map(t => t.exp as number)
    expect(renewed - first).toBeGreaterThanOrEqual(28 * 60 - 1)
    expect(again).toBe(renewed)
    expect(renewed).toBeGreaterThan(Date.now() / 1000 + 29 * 60)
  })

  it('a wrong secret is 401 KLING_1002: not retryable, not created, the secret nowhere in the error', async () => {
    const wrong = 'sk-wrong-' + randomBytes(8).toString('hex')
    const err = await failure(adapter({ secretKey: wrong }).create('image2video', bodyOf('image2video')))
    expect(err).toMatchObject({ code: 'KLING_1002', httpStatus: 401, retryable: false, maybeCreated: false })
    expect(err.message).toBe('Authorization is invalid')
    expect(sim.counts.accepted).toBe(0)
    expect(JSON.stringify(err)).not.toContain(wrong)
    const noKeyOfOurs = await failure(adapter({ accessKey: 'ak-someone-else' }).query('image2video', '1'))
    expect(noKeyOfOurs).toMatchObject({ code: 'KLING_1002', retryable: false })
  })

  it('an expired token (KLING_1004) is retryable, certainly not created; the next call signs a fresh one', async () => {
    const kling = adapter()
    offset = -31 * MINUTE
    const ext = randomUUID()
    const err = await failure(kling.create('multi-image2video', bodyOf('multi-image2video', ext)))
    expect(err).toMatchObject({ code: 'KLING_1004', httpStatus: 401, retryable: true, maybeCreated: false })
    expect(sim.acceptedFor(ext)).toBe(0)
    offset = 0
    expect((await kling.create('multi-image2video', bodyOf('multi-image2video', ext))).externalTaskId).toBe(ext)
    const [expired, fresh] = sim.tokensSeen.map(t => t.exp as number)
    expect(expired).toBeLessThan(Date.now() / 1000)
    expect(fresh).toBeGreaterThan(Date.now() / 1000 + 29 * 60)
  })

  it('a token Kling calls expired while the adapter thought it good (a skewed clock) is not sent again', async () => {
    const kling = adapter()
    await kling.query('text2video', 'warm-up')
    sim.inject({ on: 'query', kind: 'kling-error', status: 401, code: 1004, message: 'Authorization has expired' })
    expect(await failure(kling.query('text2video', 'x'))).toMatchObject({ code: 'KLING_1004', retryable: true })
    // 3 s on (within nbf's 5 s): the old token has ~30 minutes left by the adapter's clock, so only dropping it
    // explains a new one.
    offset = 3000
    expect(await kling.query('text2video', 'y')).toBeNull()
    const exps = sim.tokensSeen.map(t => t.exp as number)
    expect(exps).toHaveLength(3)
    expect(exps[1]).toBe(exps[0])
    expect(exps[2] - exps[0]).toBeGreaterThanOrEqual(2)
  })

  it('reads Kling\'s error table', async () => {
    const kling = adapter()
    const cases: Array<[Parameters<Simulator['inject']>[0], Partial<UpstreamError>]> = [
      [{ on: 'create', kind: 'kling-error', status: 429, code: 1303, message: 'parallel task over limit' },
        { code: 'KLING_1303', retryable: true, maybeCreated: false }],
      [{ on: 'create', kind: 'kling-error', status: 429, code: 1102, message: 'resource pack exhausted' },
        { code: 'KLING_1102', retryable: false, maybeCreated: false }],
      [{ on: 'create', kind: 'kling-error', status: 400, code: 1301, message: 'content security' },
        { code: 'KLING_1301', retryable: false }],
      [{ on: 'create', kind: 'kling-error', status: 503, code: 5001, message: 'maintenance' },
        { code: 'KLING_5001', retryable: true, maybeCreated: true }],
      [{ on: 'create', kind: 'kling-error', status: 200, code: 1201, message: 'bad value' },
        { code: 'KLING_1201', retryable: false, httpStatus: 200 }],
      [{ on: 'create', kind: 'rate-limit', retryAfter: 3 },
        { code: 'UPSTREAM_RATE_LIMITED', retryable: true, retryAfterMs: 3000 }],
      [{ on: 'create', kind: 'html', status: 502 }, { code: 'UPSTREAM_HTTP_502', retryable: true, maybeCreated: true }],
      [{ on: 'create', kind: 'reset' }, { code: 'UPSTREAM_RESET', retryable: true, maybeCreated: true }]
    ]
    for (const [fault, expected] of cases) {
      sim.inject(fault)
      const err = await failure(kling.create('text2video', bodyOf('text2video')))
      expect(err, JSON.stringify(fault)).toMatchObject(expected)
    }
    // Kling answers a query for no such task with 400 / 1201: that is "not found", not an error.
    expect(await kling.query('image2video', randomUUID())).toBeNull()
  })

  it('keeps the keys and tokens out of every error message, JSON and inspection', async () => {
    const kling = adapter({ baseUrl: capture.url })
    const echo = (h: IncomingHttpHeaders) => `bad ${String(h.authorization)} for ${AK} signed by ${SK}`
    capture.answer = h => ({ status: 401, body: { code: 1002, message: echo(h) } })
    const err = await failure(kling.query('text2video', '1'))
    expect(err.message).toBe('bad Bearer [redacted] for [redacted] signed by [redacted]')
    const base = { baseUrl: sim.baseUrl, timeoutMs: 1000 }
    expect(() => new KlingAdapter({ ...base, accessKey: `${AK} `, secretKey: SK })).toThrow(/accessKey/)
    try {
      // eslint-disable-next-line no-new
      new KlingAdapter({ ...base, accessKey: `\n${AK}`, secretKey: SK })
    } catch (e) {
      expect(String(e)).not.toContain(AK)
    }
    expect(() => new KlingAdapter({ ...base, accessKey: AK, secretKey: '' })).toThrow(/secretKey/)
    expect(seen.length).toBeGreaterThan(10)
    for (const e of seen) {
      const err = e as Error
      const texts = [err.message, JSON.stringify(err), inspect(err, { depth: 10, showHidden: true }), String(err.stack)]
      for (const text of texts) {
        expect(text).not.toContain(SK)
        expect(text).not.toContain(AK)
        expect(text).not.toMatch(/eyJ[\w-]+\.eyJ/)
      }
    }
    for (const a of adapters) {
      for (const text of [JSON.stringify(a), inspect(a, { depth: 10, showHidden: true })]) {
        expect(text).not.toContain(SK)
        expect(text).not.toContain(AK)
      }
    }
  })
})

describe('UPSTREAM=kling end to end', () => {
  const FAST = { UPSTREAM_TIMEOUT_MS: '1000', UPSTREAM_RETRY_BASE_MS: '20', SUBMIT_UNCONFIRMED_GRACE_MS: '200' }
  const harness = harnessPerTest()

  it('multi-image and text2video: created, submitted, callback, query, succeeded on Kling\'s paths', async () => {
    const env = { ...KLING_ENV, ...FAST, RECONCILE_INTERVAL_MS: '60000' }
    const h = await harness({ listen: true, env, sim: { processingAfterMs: 50, finishAfterMs: 150 } })
    expect(h.upstream.name).toBe('kling')
    const multi = await createTask(h)
    const made = await h.app.inject({
      method: 'POST',
      url: '/v1/videos/text2video',
      headers: auth('alice'),
      payload: { prompt: 'a fox runs through snow' }
    })
    expect(made.statusCode, made.body).toBe(202)
    const text = made.json<TaskView>()
    for (const [task, kind] of [[multi, 'multi-image2video'], [text, 'text2video']] as const) {
      const done = await waitFor(h, task.id, t => t.status === 'succeeded')
      expect(done.status, JSON.stringify(done.error)).toBe('succeeded')
      expect(done.kind).toBe(kind)
      expect(h.sim.tasks.get(done.upstream?.task_id ?? '')).toMatchObject({ kind, api: 'kling' })
      const events = (await h.app.deps.store.events(task.id)).map(e => e.type)
      expect(events.slice(0, 4)).toEqual(['video.queued', 'video.submitted', 'video.processing', 'video.succeeded'])
    }
    expect(h.sim.counts.callbacks).toBeGreaterThanOrEqual(4)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(2)
    // One token served every call: creates and the queries that confirmed the callbacks.
    expect(new Set(h.sim.tokensSeen.map(t => t.exp)).size).toBe(1)
    expect(h.sim.tokensSeen.length).toBe(h.sim.counts.creates + h.sim.counts.queries)
  })

  it('an expired token is renewed: the create Kling refused (1004) goes again with a fresh token', async () => {
    let calls = 0
    // The first token is signed by a clock 31 minutes slow, as after a suspend: expired when Kling sees it.
    const upstreamClock = () => Date.now() - (calls++ === 0 ? 31 * MINUTE : 0)
    const h = await harness({ env: { ...KLING_ENV, ...FAST }, sim: { auto: false }, upstreamClock })
    const task = await createTask(h)
    const done = await waitFor(h, task.id, t => t.status !== 'queued')
    expect(done.status, JSON.stringify(done.error)).toBe('submitted')
    expect(done.error).toBeNull()
    expect(h.sim.counts.creates).toBe(2)
    expect(h.sim.counts.accepted).toBe(1)
    const [expired, fresh] = h.sim.tokensSeen.map(t => t.exp as number)
    expect(expired).toBeLessThan(Date.now() / 1000)
    expect(fresh).toBeGreaterThan(Date.now() / 1000 + 29 * 60)
    expect(h.logs.text).toContain('KLING_1004')
  })
})
