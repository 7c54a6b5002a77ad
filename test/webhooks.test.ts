/**
 * Outbound webhooks end to end (docs/API.md, "Webhooks"): real tasks make the events, the real app delivers them over
 * real HTTP to a real receiver on loopback, and the signatures are checked with the standardwebhooks library and with
 * an independent HMAC. No mocks.
 */
import { keys } from '../src/store/keys.ts'
import { describe, it, expect, afterEach } from 'vitest'
import { createHmac, randomBytes } from 'node:crypto'
import { Webhook } from 'standardwebhooks'
import { Simulator } from '../simulator/app.ts'
import { auth, KEYS, startHarness, type Harness } from './helpers/harness.ts'
import { createTask, waitFor } from './helpers/tasks.ts'
import { Receiver, type Received } from './helpers/receiver.ts'

const ENV = {
  WEBHOOK_ALLOW_PRIVATE: 'true',
  WEBHOOK_RETRY_SCHEDULE: '0,30ms,30ms,30ms,30ms,30ms',
  WEBHOOK_TIMEOUT_MS: '300',
  RECONCILE_INTERVAL_MS: '600000'
}

interface EndpointView {
  id: string
  url: string
  event_types: string[] | null
  description: string | null
  enabled: boolean
  disabled_reason: string | null
  created_at: string
  secret?: string
}
interface AttemptView { at: string, status_code: number | null, error: string | null, duration_ms: number }
interface DeliveryView {
  id: string
  webhook_id: string
  endpoint_id: string | null
  url: string
  task_id: string
  type: string
  sequence: number
  status: 'pending' | 'succeeded' | 'failed'
  attempts: AttemptView[]
}

let harnesses: Harness[] = []
let receivers: Receiver[] = []
let sims: Simulator[] = []
afterEach(async () => {
  for (const r of receivers) await r.close()
  for (const h of harnesses) await h.close()
  for (const s of sims) await s.close()
  harnesses = []
  receivers = []
  sims = []
})

async function harness (opts: Parameters<typeof startHarness>[0] = {}): Promise<Harness> {
  const h = await startHarness({ sim: { auto: false }, ...opts, env: { ...ENV, ...opts.env } })
  harnesses.push(h)
  return h
}

async function receiver (): Promise<Receiver> {
  const r = await Receiver.start()
  receivers.push(r)
  return r
}

const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

/** Calls `get` until `ok` holds, at most `tries` × 25 ms; returns the last value. */
async function until<T> (get: () => Promise<T>, ok: (v: T) => boolean, tries = 200): Promise<T> {
  let v = await get()
  for (let i = 0; i < tries && !ok(v); i++) {
    await sleep(25)
    v = await get()
  }
  return v
}

async function addEndpoint (
  h: Harness,
  body: Record<string, unknown>,
  who: 'alice' | 'bob' = 'alice'
): Promise<EndpointView & { secret: string }> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/webhook-endpoints', headers: auth(who), payload: body })
  expect(res.statusCode, res.body).toBe(201)
  return res.json()
}

async function listEndpoints (h: Harness, who: 'alice' | 'bob' = 'alice'): Promise<EndpointView[]> {
  const res = await h.app.inject({ url: '/v1/webhook-endpoints', headers: auth(who) })
  expect(res.statusCode, res.body).toBe(200)
  return res.json().data
}

async function listDeliveries (
  h: Harness,
  query = '',
  who: 'alice' | 'bob' | 'ops' = 'alice'
): Promise<DeliveryView[]> {
  const res = await h.app.inject({ url: `/v1/deliveries${query}`, headers: auth(who) })
  expect(res.statusCode, res.body).toBe(200)
  return res.json().data
}

/** Polls the deliveries list until the one with this webhook-id satisfies `ok`. */
async function waitDelivery (
  h: Harness,
  webhookId: string,
  ok: (d: DeliveryView) => boolean,
  tries = 200
): Promise<DeliveryView | undefined> {
  const find = async () => (await listDeliveries(h)).find(d => d.webhook_id === webhookId)
  return await until(find, d => d !== undefined && ok(d), tries)
}

/** A task through `submitted`, so that its upstream twin can be moved by hand. */
async function submittedTask (h: Harness, over: Record<string, unknown> = {}) {
  const task = await createTask(h, over)
  const t = await waitFor(h, task.id, x => x.status === 'submitted')
  expect(t.status).toBe('submitted')
  return { id: task.id, upstreamId: t.upstream?.task_id as string }
}

async function succeed (h: Harness, task: { id: string, upstreamId: string }) {
  h.sim.setStatus(task.upstreamId, 'succeed')
  expect(await h.app.deps.reconcile.checkTask(task.id)).toBe('applied')
}

const header = (r: Received, name: string): string => {
  const v = r.headers[name]
  if (typeof v !== 'string') throw new Error(`header ${name} missing or repeated`)
  return v
}

const swHeaders = (r: Received) => ({
  'webhook-id': header(r, 'webhook-id'),
  'webhook-timestamp': header(r, 'webhook-timestamp'),
  'webhook-signature': header(r, 'webhook-signature')
})

/** Standard Webhooks v1 signature computed with node:crypto alone, without the library. */
function hmacSignature (secret: string, id: string, timestamp: string | number, body: string): string {
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64')
  return `v1,${createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest('base64')}`
}

/** The request verifies with `secret` by the library and by the independent HMAC. */
function expectSignedBy (r: Received, secret: string) {
  expect(() => new Webhook(secret).verify(r.body, swHeaders(r))).not.toThrow()
  const signatures = header(r, 'webhook-signature').split(' ')
  expect(signatures).toContain(hmacSignature(secret, header(r, 'webhook-id'), header(r, 'webhook-timestamp'), r.body))
}

describe('webhook endpoints (CRUD)', () => {
  it('creates with a whsec_ secret shown once, lists without it, deletes; ' +
    'another caller gets 404; event_types are checked', async () => {
    const h = await harness({ workers: false })
    const noAuth = await h.app.inject({ method: 'POST', url: '/v1/webhook-endpoints', payload: { url: 'http://127.0.0.1:9/hook' } })
    expect(noAuth.statusCode).toBe(401)

    const ep = await addEndpoint(h, { url: 'http://127.0.0.1:9/hook', description: 'billing', event_types: ['video.succeeded', 'video.failed'] })
    expect(ep).toMatchObject({ url: 'http://127.0.0.1:9/hook', description: 'billing', event_types: ['video.succeeded', 'video.failed'], enabled: true, disabled_reason: null })
    expect(ep.id).toMatch(/^[A-Za-z0-9_-]+$/)
    expect(ep.secret).toMatch(/^whsec_[A-Za-z0-9+/]+=*$/)
    expect(Buffer.from(ep.secret.slice('whsec_'.length), 'base64').length).toBeGreaterThanOrEqual(24)
    const all = await addEndpoint(h, { url: 'http://127.0.0.1:9/all' })
    expect(all.event_types).toBeNull()
    expect(all.secret).not.toBe(ep.secret)

    const listed = await listEndpoints(h)
    expect(listed.map(e => e.id).sort()).toEqual([ep.id, all.id].sort())
    for (const e of listed) expect(e).not.toHaveProperty('secret')
    const listRes = await h.app.inject({ url: '/v1/webhook-endpoints', headers: auth('alice') })
    expect(listRes.body).not.toContain(ep.secret)
    expect(listRes.body).not.toContain('whsec_')

    // Bob sees none of them and cannot touch them.
    expect(await listEndpoints(h, 'bob')).toEqual([])
    for (const req of [
      { method: 'DELETE' as const, url: `/v1/webhook-endpoints/${ep.id}` },
      { method: 'POST' as const, url: `/v1/webhook-endpoints/${ep.id}/rotate-secret` },
      {
        method: 'POST' as const,
        url: `/v1/webhook-endpoints/${ep.id}/recover`,
        payload: { since: new Date(0).toISOString() }
      }
    ]) {
      const res = await h.app.inject({ ...req, headers: auth('bob') })
      expect(res.statusCode, `${req.method} ${req.url}`).toBe(404)
      expect(res.body).not.toContain(ep.secret)
    }
    expect((await h.app.inject({ url: `/v1/deliveries?endpoint=${ep.id}`, headers: auth('bob') })).statusCode).toBe(404)
    expect((await listEndpoints(h)).length).toBe(2)

    const del = await h.app.inject({ method: 'DELETE', url: `/v1/webhook-endpoints/${ep.id}`, headers: auth('alice') })
    expect(del.statusCode).toBe(204)
    expect(del.body).toBe('')
    expect((await listEndpoints(h)).map(e => e.id)).toEqual([all.id])
    expect((await h.app.inject({
      method: 'DELETE', url: `/v1/webhook-endpoints/${ep.id}`, headers: auth('alice')
    })).statusCode).toBe(404)
    expect((await h.app.inject({
      method: 'POST', url: `/v1/webhook-endpoints/${ep.id}/rotate-secret`, headers: auth('alice')
    })).statusCode).toBe(404)

    const badEventTypes = [
      ['video.exploded'], ['video.succeeded', 'video.nope'], [], 'video.succeeded', ['video.failed', 'video.failed']
    ]
    for (const eventTypes of badEventTypes) {
      const res = await h.app.inject({ method: 'POST', url: '/v1/webhook-endpoints', headers: auth('alice'), payload: { url: 'http://127.0.0.1:9/x', event_types: eventTypes } })
      expect(res.statusCode, JSON.stringify(eventTypes)).toBe(400)
      expect(res.headers['content-type']).toContain('application/problem+json')
      expect(res.json().errors.map((e: { pointer: string }) => e.pointer).join(' '), JSON.stringify(eventTypes))
        .toMatch(/^\/event_types/)
    }
    const unknownField = await h.app.inject({ method: 'POST', url: '/v1/webhook-endpoints', headers: auth('alice'), payload: { url: 'http://127.0.0.1:9/x', secret: 'whsec_mine' } })
    expect(unknownField.statusCode).toBe(400)
    expect((await listEndpoints(h)).length).toBe(1)
  })
})

describe('webhook deliveries', () => {
  it('delivers every event once with {type, timestamp, data: task}, signed per Standard Webhooks; ' +
    'event_types filter', async () => {
    const h = await harness()
    const r = await receiver()
    const ep = await addEndpoint(h, { url: r.url('/hook') })
    const onlySubmitted = await addEndpoint(h, { url: r.url('/submitted'), event_types: ['video.submitted'] })
    const { id } = await submittedTask(h)

    const got = await r.waitFor(2, { path: '/hook' })
    expect(got.map(x => JSON.parse(x.body).type).sort()).toEqual(['video.queued', 'video.submitted'])
    const events = await h.app.deps.store.events(id)
    expect(events.map(e => e.type)).toEqual(['video.queued', 'video.submitted'])
    for (const x of got) {
      expect(x.method).toBe('POST')
      expect(x.headers['content-type']).toBe('application/json')
      const body = JSON.parse(x.body) as {
        type: string, timestamp: string, data: { id: string, sequence: number, status: string }
      }
      expect(Object.keys(body).sort()).toEqual(['data', 'timestamp', 'type'])
      const event = events.find(e => e.type === body.type)!
      expect(body.timestamp).toBe(event.timestamp)
      expect(new Date(body.timestamp).toISOString()).toBe(body.timestamp)
      expect(body.data).toEqual(event.data)
      expect(body.data).toMatchObject({ id, sequence: event.sequence, status: body.type.slice('video.'.length) })

      expect(header(x, 'webhook-id')).toMatch(/^msg_[A-Za-z0-9_-]+$/)
      expect(header(x, 'webhook-timestamp')).toMatch(/^\d+$/)
      expect(Math.abs(Number(header(x, 'webhook-timestamp')) - x.at / 1000)).toBeLessThan(5)
      expect(header(x, 'webhook-signature')).toMatch(/^v1,[A-Za-z0-9+/]+=*$/)
      expectSignedBy(x, ep.secret)
      expect(() => new Webhook(onlySubmitted.secret).verify(x.body, swHeaders(x))).toThrow()
      // A tampered body does not verify.
      const tampered = x.body.replace(id, id.replace(/.$/, c => c === 'a' ? 'b' : 'a'))
      expect(() => new Webhook(ep.secret).verify(tampered, swHeaders(x))).toThrow()
    }
    expect(new Set(got.map(x => header(x, 'webhook-id'))).size).toBe(2)

    const sub = await r.waitFor(1, { path: '/submitted' })
    expect(sub.map(x => JSON.parse(x.body).type)).toEqual(['video.submitted'])
    expectSignedBy(sub[0], onlySubmitted.secret)
    // One webhook-id per event and destination.
    expect(got.map(x => header(x, 'webhook-id'))).not.toContain(header(sub[0], 'webhook-id'))

    // The deliveries API agrees: three deliveries, each succeeded on its first attempt, with the same webhook-ids.
    const list = await until(
      async () => await listDeliveries(h),
      l => l.length === 3 && l.every(d => d.status === 'succeeded')
    )
    expect(list.map(d => d.status)).toEqual(['succeeded', 'succeeded', 'succeeded'])
    expect(list.map(d => d.webhook_id).sort()).toEqual([...got, ...sub].map(x => header(x, 'webhook-id')).sort())
    for (const d of list) {
      expect(d.task_id).toBe(id)
      expect(d.attempts.map(a => a.status_code)).toEqual([200])
    }
    expect((await listDeliveries(h, `?endpoint=${onlySubmitted.id}`)).map(d => d.type)).toEqual(['video.submitted'])
    expect(await listDeliveries(h, '', 'bob')).toEqual([])
    expect((await listDeliveries(h, '', 'ops')).length).toBe(3)
    // Nothing more arrives: exactly one request per event and destination.
    await sleep(150)
    expect(r.requests.length).toBe(3)
  })

  it('matches the Standard Webhooks known-answer vector, by the library and by an independent HMAC', () => {
    const secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
    const msgId = 'msg_p5jXN8AQM9LWM0D4loKWxJek'
    const timestamp = 1614265330
    const body = '{"test": 2432232314}'
    const expected = 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE='
    expect(new Webhook(secret).sign(msgId, new Date(timestamp * 1000), body)).toBe(expected)
    expect(hmacSignature(secret, msgId, timestamp, body)).toBe(expected)
    // The library's verify accepts it too (its clock check aside, which this old timestamp would fail).
    const headers = { 'webhook-id': msgId, 'webhook-timestamp': String(timestamp), 'webhook-signature': expected }
    expect(() => new Webhook(secret).verify(body, headers)).toThrow(/timestamp/i)
  })

  it('retries 500, a hang, 429 + Retry-After, a 301 (not followed) until a 200: ' +
    'same webhook-id, attempts recorded', async () => {
    const h = await harness()
    const r = await receiver()
    r.script(
      { status: 500 },
      { status: 200, hang: true },
      { status: 429, headers: { 'retry-after': '1' } },
      { status: 301, headers: { location: r.url('/moved') } },
      { status: 200 }
    )
    const ep = await addEndpoint(h, { url: r.url('/hook'), event_types: ['video.queued'] })
    await createTask(h)

    const got = await r.waitFor(5, { path: '/hook', timeoutMs: 8000 })
    expect(got.map(x => x.answer.status)).toEqual([500, 200, 429, 301, 200])
    const ids = new Set(got.map(x => header(x, 'webhook-id')))
    expect(ids.size).toBe(1)
    expect(new Set(got.map(x => x.body)).size).toBe(1)
    for (const x of got) expectSignedBy(x, ep.secret)
    // The timestamp is this attempt's (seconds): never behind the previous one, and a second later after the wait
    // the 429 asked for.
    const stamps = got.map(x => Number(header(x, 'webhook-timestamp')))
    for (let i = 0; i < got.length; i++) {
      expect(Math.abs(stamps[i] - Math.floor(got[i].at / 1000))).toBeLessThanOrEqual(1)
      if (i > 0) expect(stamps[i]).toBeGreaterThanOrEqual(stamps[i - 1])
    }
    expect(stamps[3]).toBeGreaterThan(stamps[2])
    expect(new Set(stamps).size).toBeGreaterThan(1)
    // The hang was cut at WEBHOOK_TIMEOUT_MS; Retry-After: 1 was honoured.
    expect(got[2].at - got[1].at).toBeGreaterThanOrEqual(250)
    expect(got[3].at - got[2].at).toBeGreaterThanOrEqual(990)
    // The redirect was not followed.
    expect(r.on('/moved')).toEqual([])

    const d = await waitDelivery(h, [...ids][0], x => x.status === 'succeeded')
    expect(d?.status).toBe('succeeded')
    expect(d?.endpoint_id).toBe(ep.id)
    expect(d?.attempts.map(a => a.status_code)).toEqual([500, null, 429, 301, 200])
    expect(d?.attempts[1].error).toMatch(/time|abort/i)
    expect(d?.attempts[3].error).toMatch(/redirect/i)
    expect(d?.attempts[4].error).toBeNull()
    expect(await listDeliveries(h, '?status=failed')).toEqual([])
    expect(r.on('/moved')).toEqual([])
  })

  it('makes exactly as many attempts as the schedule, then fails; ' +
    'retry and recover replay with the same webhook-id', async () => {
    const h = await harness({ env: { WEBHOOK_RETRY_SCHEDULE: '0,20ms,20ms' } })
    const r = await receiver()
    r.answerAlways({ status: 500 })
    const ep = await addEndpoint(h, { url: r.url('/hook'), event_types: ['video.queued'] })

    // One event, three attempts, then failed.
    await createTask(h)
    const failed = await until(async () => await listDeliveries(h, '?status=failed'), l => l.length === 1)
    expect(failed.length).toBe(1)
    const first = failed[0]
    expect(first.status).toBe('failed')
    expect(first.attempts.map(a => a.status_code)).toEqual([500, 500, 500])
    await sleep(150)
    expect(r.requests.length).toBe(3)
    expect(new Set(r.requests.map(x => header(x, 'webhook-id')))).toEqual(new Set([first.webhook_id]))
    expect((await listDeliveries(h, `?status=failed&endpoint=${ep.id}`)).map(d => d.id)).toEqual([first.id])

    // A manual retry, once the receiver is fixed: one more attempt, same webhook-id, delivered.
    r.answerAlways({ status: 200 })
    expect((await h.app.inject({
      method: 'POST', url: `/v1/deliveries/${first.id}/retry`, headers: auth('bob')
    })).statusCode).toBe(404)
    const retry = await h.app.inject({
      method: 'POST', url: `/v1/deliveries/${first.id}/retry`, headers: auth('alice')
    })
    expect(retry.statusCode, retry.body).toBe(202)
    expect(retry.json()).toMatchObject({ id: first.id, webhook_id: first.webhook_id })
    const retried = await r.waitFor(4)
    expect(retried.length).toBe(4)
    expect(header(retried[3], 'webhook-id')).toBe(first.webhook_id)
    expectSignedBy(retried[3], ep.secret)
    const done = await waitDelivery(h, first.webhook_id, d => d.status === 'succeeded')
    expect(done?.attempts.map(a => a.status_code)).toEqual([500, 500, 500, 200])
    expect(await listDeliveries(h, '?status=failed')).toEqual([])
    const again = await h.app.inject({
      method: 'POST', url: `/v1/deliveries/${first.id}/retry`, headers: auth('alice')
    })
    expect(again.statusCode).toBe(202)
    await r.waitFor(5)
    await waitDelivery(h, first.webhook_id, d => d.status === 'succeeded' && d.attempts.length === 5)

    // Recover: a failure before `since` stays failed, every failure since then is replayed.
    r.answerAlways({ status: 500 })
    await createTask(h)
    const old = await until(async () => await listDeliveries(h, '?status=failed'), l => l.length === 1)
    expect(old.length).toBe(1)
    await sleep(20)
    const since = new Date().toISOString()
    await createTask(h)
    await createTask(h)
    const newer = await until(async () => await listDeliveries(h, '?status=failed'), l => l.length === 3)
    expect(newer.length).toBe(3)
    const replayIds = newer.filter(d => d.id !== old[0].id).map(d => d.webhook_id).sort()
    const before = r.requests.length
    r.answerAlways({ status: 200 })
    expect((await h.app.inject({
      method: 'POST', url: `/v1/webhook-endpoints/${ep.id}/recover`, headers: auth('bob'), payload: { since }
    })).statusCode).toBe(404)
    const rec = await h.app.inject({
      method: 'POST', url: `/v1/webhook-endpoints/${ep.id}/recover`, headers: auth('alice'), payload: { since }
    })
    expect(rec.statusCode, rec.body).toBe(202)
    expect(rec.json()).toEqual({ recovered: 2 })
    const replayed = (await r.waitFor(before + 2)).slice(before)
    expect(replayed.map(x => header(x, 'webhook-id')).sort()).toEqual(replayIds)
    for (const x of replayed) expectSignedBy(x, ep.secret)
    const after = await until(
      async () => await listDeliveries(h),
      l => l.filter(d => d.status === 'succeeded').length === 3
    )
    expect(after.filter(d => d.status === 'succeeded').map(d => d.webhook_id).sort())
      .toEqual([first.webhook_id, ...replayIds].sort())
    expect((await listDeliveries(h, '?status=failed')).map(d => d.id)).toEqual([old[0].id])
    await sleep(100)
    expect(r.requests.length).toBe(before + 2)
  })

  it('disables an endpoint that answers 410 and sends it nothing more', async () => {
    const h = await harness()
    const gone = await receiver()
    const ok = await receiver()
    gone.answerAlways({ status: 410 })
    const ep = await addEndpoint(h, { url: gone.url('/hook'), event_types: ['video.queued', 'video.succeeded'] })
    await addEndpoint(h, { url: ok.url('/hook'), event_types: ['video.queued', 'video.succeeded'] })
    const task = await submittedTask(h)
    expect((await gone.waitFor(1)).length).toBe(1)
    const disabled = await until(
      async () => (await listEndpoints(h)).find(e => e.id === ep.id),
      e => e?.enabled === false
    )
    expect(disabled?.enabled).toBe(false)
    expect(disabled?.disabled_reason).toMatch(/410/)
    const d = await waitDelivery(h, header(gone.requests[0], 'webhook-id'), x => x.status === 'failed')
    expect(d?.attempts.map(a => a.status_code)).toEqual([410])

    // The next event goes to the healthy endpoint only.
    await succeed(h, task)
    const okGot = await ok.waitFor(2)
    expect(okGot.map(x => JSON.parse(x.body).type)).toEqual(['video.queued', 'video.succeeded'])
    await sleep(150)
    expect(gone.requests.length).toBe(1)
    expect((await listDeliveries(h, `?endpoint=${ep.id}`)).length).toBe(1)
  })

  it('signs with both secrets after a rotation: one signature verifies with the old, one with the new', async () => {
    const h = await harness()
    const r = await receiver()
    const ep = await addEndpoint(h, { url: r.url('/hook'), event_types: ['video.queued', 'video.succeeded'] })
    const task = await submittedTask(h)
    const [before] = await r.waitFor(1)
    expect(header(before, 'webhook-signature').split(' ').length).toBe(1)
    expectSignedBy(before, ep.secret)

    const rot = await h.app.inject({
      method: 'POST', url: `/v1/webhook-endpoints/${ep.id}/rotate-secret`, headers: auth('alice')
    })
    expect(rot.statusCode, rot.body).toBe(200)
    const rotated = rot.json() as EndpointView & { secret: string }
    expect(rotated.id).toBe(ep.id)
    expect(rotated.secret).toMatch(/^whsec_/)
    expect(rotated.secret).not.toBe(ep.secret)
    for (const e of await listEndpoints(h)) expect(e).not.toHaveProperty('secret')

    await succeed(h, task)
    const got = await r.waitFor(2)
    expect(got.length).toBe(2)
    const after = got[1]
    expect(JSON.parse(after.body).type).toBe('video.succeeded')
    const signatures = header(after, 'webhook-signature').split(' ')
    expect(signatures.length).toBe(2)
    for (const s of signatures) expect(s).toMatch(/^v1,[A-Za-z0-9+/]+=*$/)
    expectSignedBy(after, ep.secret)
    expectSignedBy(after, rotated.secret)
    const id = header(after, 'webhook-id')
    const ts = header(after, 'webhook-timestamp')
    expect(new Set(signatures)).toEqual(new Set([
      hmacSignature(ep.secret, id, ts, after.body), hmacSignature(rotated.secret, id, ts, after.body)
    ]))
    expect(() => new Webhook(`whsec_${randomBytes(32).toString('base64')}`).verify(after.body, swHeaders(after)))
      .toThrow()
  })

  it('delivers a task\'s events to its own webhook_url, signed with the caller\'s secret, ' +
    'beside the endpoints', async () => {
    const h = await harness()
    const r = await receiver()
    const ep = await addEndpoint(h, { url: r.url('/hook') })
    const { id } = await submittedTask(h, { webhook_url: r.url('/task?x=1') })
    const secretRes = await h.app.inject({ url: '/v1/webhook-secret', headers: auth('alice') })
    expect(secretRes.statusCode).toBe(200)
    const secret = secretRes.json().secret as string
    expect(secret).toMatch(/^whsec_/)
    expect(secret).not.toBe(ep.secret)
    const bobSecret = (await h.app.inject({ url: '/v1/webhook-secret', headers: auth('bob') })).json().secret as string
    expect(bobSecret).not.toBe(secret)

    const got = await r.waitFor(2, { path: '/task' })
    expect(got.map(x => x.path)).toEqual(['/task?x=1', '/task?x=1'])
    expect(got.map(x => JSON.parse(x.body).type).sort()).toEqual(['video.queued', 'video.submitted'])
    for (const x of got) {
      expect(JSON.parse(x.body).data.id).toBe(id)
      expectSignedBy(x, secret)
      expect(() => new Webhook(ep.secret).verify(x.body, swHeaders(x))).toThrow()
      expect(() => new Webhook(bobSecret).verify(x.body, swHeaders(x))).toThrow()
    }
    // The registered endpoint gets them too, under other webhook-ids.
    const viaEndpoint = await r.waitFor(2, { path: '/hook' })
    expect(viaEndpoint.length).toBe(2)
    for (const x of viaEndpoint) expectSignedBy(x, ep.secret)
    expect(new Set([...got, ...viaEndpoint].map(x => header(x, 'webhook-id'))).size).toBe(4)
    const list = await until(
      async () => await listDeliveries(h),
      l => l.length === 4 && l.every(d => d.status === 'succeeded')
    )
    expect(list.filter(d => d.endpoint_id === null).map(d => d.url)).toEqual([r.url('/task?x=1'), r.url('/task?x=1')])
    // Same secret on a second look: it is one per caller, made once.
    expect((await h.app.inject({ url: '/v1/webhook-secret', headers: auth('alice') })).json().secret).toBe(secret)
  })

  it('loses no event made while no replica was delivering: a later replica delivers the backlog', async () => {
    const sim = new Simulator({ apiKey: KEYS.comet, auto: false })
    await sim.listen()
    sims.push(sim)
    const env = { REDIS_PREFIX: `wh${randomBytes(4).toString('hex')}` }
    const quiet = await harness({ simulator: sim, env, workers: false })
    const r = await receiver()
    const ep = await addEndpoint(quiet, { url: r.url('/hook') })
    const t1 = await createTask(quiet)
    const t2 = await createTask(quiet)
    expect((await quiet.app.deps.store.events(t1.id)).map(e => e.type)).toEqual(['video.queued'])
    await sleep(200)
    expect(r.requests).toEqual([])

    // Started with workers: it submits the tasks (two more events) and delivers all four, the backlog included.
    const worker = await harness({ simulator: sim, env })
    const got = await r.waitFor(4, { timeoutMs: 8000 })
    const seen = got
      .map(x => JSON.parse(x.body) as { type: string, data: { id: string } })
      .map(b => `${b.data.id} ${b.type}`)
      .sort()
    expect(seen).toEqual([
      `${t1.id} video.queued`, `${t1.id} video.submitted`, `${t2.id} video.queued`, `${t2.id} video.submitted`
    ].sort())
    for (const x of got) expectSignedBy(x, ep.secret)
    await until(async () => await listDeliveries(worker), l => l.length === 4 && l.every(d => d.status === 'succeeded'))
    await sleep(150)
    expect(new Set(r.requests.map(x => x.headers['webhook-id'])).size).toBe(4)
    // A repeat is only ever the retry of an attempt that failed (a first attempt made while the replica was still
    // starting can pass the test's 300 ms timeout): every request received is an attempt recorded.
    const attempts = (await listDeliveries(worker)).reduce((n, d) => n + (d.attempts as unknown[]).length, 0)
    expect(r.requests.length).toBe(attempts)
    // The stream has no entry left unacknowledged.
    const pending = await worker.redis.xpending(keys(worker.prefix).events, 'webhooks') as [number, ...unknown[]]
    expect(pending[0]).toBe(0)
  })
})

describe('SSRF guard at registration (default config)', () => {
  it('refuses private, loopback, link-local, CGNAT, ULA, mapped and plain-http targets with a pointer', async () => {
    const h = await harness({ workers: false, env: { WEBHOOK_ALLOW_PRIVATE: 'false' } })
    for (const url of [
      'https://localhost/hook',
      'https://127.0.0.1/hook',
      'https://[::1]/hook',
      'https://169.254.169.254/latest',
      'https://10.0.0.1/',
      'https://100.64.0.1/',
      'https://[fc00::1]/',
      'https://[::ffff:127.0.0.1]/',
      'http://example.com/'
    ]) {
      const res = await h.app.inject({
        method: 'POST', url: '/v1/webhook-endpoints', headers: auth('alice'), payload: { url }
      })
      expect(res.statusCode, url).toBe(400)
      expect(res.headers['content-type']).toContain('application/problem+json')
      expect(res.json().errors.map((e: { pointer: string }) => e.pointer), url).toEqual(['/url'])
    }
    expect(await listEndpoints(h)).toEqual([])

    const create = await h.app.inject({ method: 'POST', url: '/v1/videos', headers: auth('alice'), payload: { image_list: [{ image: 'https://img.example.com/a.png' }, { image: 'https://img.example.com/b.png' }], prompt: 'p', webhook_url: 'https://localhost/x' } })
    expect(create.statusCode).toBe(400)
    expect(create.json().errors.map((e: { pointer: string }) => e.pointer)).toEqual(['/webhook_url'])
    expect((await h.app.inject({ url: '/v1/videos', headers: auth('alice') })).json().data).toEqual([])
  })
})
