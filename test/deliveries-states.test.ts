/**
 * Delivery states (docs/API.md, `GET /v1/deliveries`): pending → retrying (with next_attempt_at) → succeeded or
 * failed, each listed by its own `?status=` index; and the one refusal message that names WEBHOOK_ALLOW_PRIVATE.
 * Real app, real Redis, a real receiver on loopback.
 */
import { describe, it, expect, afterEach } from 'vitest'
import { CANNOT_USE } from '../src/notify/ssrf.ts'
import { auth, harnessPerTest, type Harness } from './helpers/harness.ts'
import { createTask } from './helpers/tasks.ts'
import { Receiver } from './helpers/receiver.ts'

interface DeliveryView {
  id: string
  status: 'pending' | 'retrying' | 'failed' | 'succeeded'
  next_attempt_at: string | null
  attempts: Array<{ status_code: number | null }>
  updated_at: string
}

const start = harnessPerTest()
const receivers: Receiver[] = []
afterEach(async () => { for (const r of receivers.splice(0)) await r.close() })

async function receiver (): Promise<Receiver> {
  const r = await Receiver.start()
  receivers.push(r)
  return r
}

const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

async function list (h: Harness, query = ''): Promise<DeliveryView[]> {
  const res = await h.app.inject({ method: 'GET', url: `/v1/deliveries${query}`, headers: auth('alice') })
  expect(res.statusCode, res.body).toBe(200)
  return res.json().data
}

/** Polls the one delivery until `ok` holds (at most 8 s); records every status seen on the way. */
async function watch (h: Harness, ok: (d: DeliveryView) => boolean, seen: DeliveryView[]): Promise<DeliveryView> {
  for (let i = 0; i < 400; i++) {
    const [d] = await list(h)
    if (d !== undefined) {
      if (seen.at(-1)?.status !== d.status || seen.at(-1)?.attempts.length !== d.attempts.length) seen.push(d)
      if (ok(d)) return d
    }
    await sleep(20)
  }
  throw new Error(`delivery never got there; seen ${seen.map(d => d.status).join(' → ')}`)
}

/** One endpoint that wants only `video.queued`, so each task makes exactly one delivery. */
async function endpoint (h: Harness, r: Receiver): Promise<void> {
  const res = await h.app.inject({
    method: 'POST',
    url: '/v1/webhook-endpoints',
    headers: auth('alice'),
    payload: { url: r.url(), event_types: ['video.queued'] }
  })
  expect(res.statusCode, res.body).toBe(201)
}

const ENV = {
  WEBHOOK_ALLOW_PRIVATE: 'true',
  WEBHOOK_TIMEOUT_MS: '300',
  RECONCILE_INTERVAL_MS: '600000'
}

describe('delivery states', () => {
  it('500 twice then 200: pending, then retrying with next_attempt_at, then succeeded, each under its ?status=',
    async () => {
      const schedule = { WEBHOOK_RETRY_SCHEDULE: '300ms,600ms,600ms,600ms' }
      const h = await start({ sim: { auto: false }, env: { ...ENV, ...schedule } })
      const r = (await receiver()).script({ status: 500 }, { status: 500 })
      await endpoint(h, r)
      await createTask(h)
      const seen: DeliveryView[] = []

      const pending = await watch(h, d => d.status === 'pending', seen)
      expect(pending.attempts).toHaveLength(0)
      expect(pending.next_attempt_at).not.toBeNull()
      expect((await list(h, '?status=pending')).map(d => d.id)).toEqual([pending.id])
      expect(await list(h, '?status=retrying')).toEqual([])

      const retrying = await watch(h, d => d.status === 'retrying', seen)
      expect(retrying.attempts.map(a => a.status_code)).toEqual([500])
      // Due in the future, by about the schedule's second entry (600 ms ± 10 %) after the failed attempt.
      const due = Date.parse(retrying.next_attempt_at as string) - Date.parse(retrying.updated_at)
      expect(due).toBeGreaterThanOrEqual(500)
      expect(due).toBeLessThanOrEqual(700)
      expect((await list(h, '?status=retrying')).map(d => d.id)).toEqual([retrying.id])
      expect(await list(h, '?status=pending')).toEqual([])

      const done = await watch(h, d => d.status === 'succeeded', seen)
      expect(done.attempts.map(a => a.status_code)).toEqual([500, 500, 200])
      expect(done.next_attempt_at).toBeNull()
      expect(seen.map(d => d.status)).toEqual(['pending', 'retrying', 'retrying', 'succeeded'])
      expect((await list(h, '?status=succeeded')).map(d => d.id)).toEqual([done.id])
      for (const other of ['pending', 'retrying', 'failed']) expect(await list(h, `?status=${other}`)).toEqual([])
      expect(r.requests).toHaveLength(3)
    })

  it('a receiver that always fails ends failed, only under ?status=failed; a retry is pending again', async () => {
    const h = await start({ sim: { auto: false }, env: { ...ENV, WEBHOOK_RETRY_SCHEDULE: '0,50ms' } })
    const r = (await receiver()).answerAlways({ status: 503 })
    await endpoint(h, r)
    await createTask(h)
    const failed = await watch(h, d => d.status === 'failed', [])
    expect(failed.attempts.map(a => a.status_code)).toEqual([503, 503])
    expect(failed.next_attempt_at).toBeNull()
    expect((await list(h, '?status=failed')).map(d => d.id)).toEqual([failed.id])
    for (const other of ['pending', 'retrying', 'succeeded']) expect(await list(h, `?status=${other}`)).toEqual([])

    r.answerAlways({ status: 200 })
    const retry = await h.app.inject({
      method: 'POST', url: `/v1/deliveries/${failed.id}/retry`, headers: auth('alice')
    })
    expect(retry.statusCode, retry.body).toBe(202)
    expect(retry.json().status).toBe('pending')
    expect(retry.json().next_attempt_at).not.toBeNull()
    const ok = await watch(h, d => d.status === 'succeeded', [])
    expect(ok.id).toBe(failed.id)
    expect(await list(h, '?status=failed')).toEqual([])
  })

  it('a record written before the states existed still reads: next_attempt_at null', async () => {
    const h = await start({ sim: { auto: false }, env: { ...ENV, WEBHOOK_RETRY_SCHEDULE: '0' } })
    const r = (await receiver()).answerAlways({ status: 200 })
    await endpoint(h, r)
    await createTask(h)
    const done = await watch(h, d => d.status === 'succeeded', [])
    await h.redis.hdel(h.app.deps.webhooks.k.delivery(done.id), 'next_attempt_at')
    const [old] = await list(h)
    expect(old.status).toBe('succeeded')
    expect(old.next_attempt_at).toBeNull()
  })

  it('?status= refuses what is not a state, naming the four', async () => {
    const h = await start({ env: ENV })
    const res = await h.app.inject({ method: 'GET', url: '/v1/deliveries?status=done', headers: auth('alice') })
    expect(res.statusCode).toBe(400)
    expect(res.json().errors[0].detail).toContain('retrying')
  })
})

describe('refusal of a private target', () => {
  it('http://127.0.0.1 is refused with the one message, naming WEBHOOK_ALLOW_PRIVATE and WEBHOOK_ALLOWED_PORTS',
    async () => {
      const h = await start({ env: { WEBHOOK_ALLOW_PRIVATE: 'false', RECONCILE_INTERVAL_MS: '600000' } })
      for (const url of ['http://127.0.0.1:9999/hook', 'https://127.0.0.1/hook', 'https://example.com:9999/']) {
        const res = await h.app.inject({
          method: 'POST', url: '/v1/webhook-endpoints', headers: auth('alice'), payload: { url }
        })
        expect(res.statusCode, url).toBe(400)
        expect(res.json().errors, url).toEqual([{ pointer: '/url', detail: CANNOT_USE, location: 'body' }])
      }
      expect(CANNOT_USE).toContain('WEBHOOK_ALLOW_PRIVATE=true')
      expect(CANNOT_USE).toContain('WEBHOOK_ALLOWED_PORTS')
      const task = await h.app.inject({
        method: 'POST',
        url: '/v1/videos',
        headers: auth('alice'),
        payload: {
          image_list: [{ image: 'https://img.example.com/a.png' }, { image: 'https://img.example.com/b.png' }],
          prompt: 'p',
          webhook_url: 'http://localhost:8080/hook'
        }
      })
      expect(task.statusCode).toBe(400)
      expect(JSON.stringify(task.json())).toContain('WEBHOOK_ALLOW_PRIVATE=true')
    })

  it('a delivery to a target no longer allowed fails with the same message', async () => {
    const h = await start({ sim: { auto: false }, env: { ...ENV, WEBHOOK_RETRY_SCHEDULE: '0' } })
    const r = (await receiver()).answerAlways({ status: 200 })
    await endpoint(h, r)
    // The operator turns WEBHOOK_ALLOW_PRIVATE off again: the registered loopback endpoint is refused at delivery.
    h.config.webhooks.allowPrivate = false
    await createTask(h)
    const failed = await watch(h, d => d.status === 'failed', [])
    const res = await h.app.inject({ method: 'GET', url: '/v1/deliveries', headers: auth('alice') })
    expect(res.json().data[0].attempts[0].error).toBe(CANNOT_USE)
    expect(failed.attempts).toHaveLength(1)
    expect(r.requests).toHaveLength(0)
  })
})

describe('a delivery status change (delivery-14.lua)', () => {
  it('moves the index entry from the status the record holds, also when the caller read a stale record', async () => {
    const h = await start({ workers: false })
    const { webhooks } = h.app.deps
    const d = await webhooks.ensureDelivery({
      id: 'dlv-index-test',
      msgId: 'msg_dlv-index-test',
      caller: 'alice',
      endpointId: null,
      url: 'https://hooks.example.com/x',
      taskId: 'task-index-test',
      type: 'video.queued',
      sequence: 1,
      payload: '{}',
      nextAttemptAt: null
    })
    expect(d.status).toBe('pending')
    const attempt = { at: new Date().toISOString(), status_code: 500, error: 'HTTP 500', duration_ms: 1 }
    await webhooks.recordAttempt(d, attempt, 'retrying', Date.now() + 1000)
    // `d` still says pending: a second writer with an old read must not leave the entry under `retrying`.
    await webhooks.recordAttempt(d, { ...attempt, status_code: 200, error: null }, 'succeeded')
    await webhooks.recordAttempt(d, { ...attempt, status_code: 200, error: null }, 'succeeded')
    for (const scope of [{ caller: 'alice' }, 'all', 'task-url'] as const) {
      for (const status of ['pending', 'retrying', 'failed', 'succeeded'] as const) {
        const listed = await h.redis.zscore(webhooks.dlvIndex(scope, status), d.id)
        expect(listed === null ? 'absent' : 'listed', `${JSON.stringify(scope)} ${status}`)
          .toBe(status === 'succeeded' ? 'listed' : 'absent')
      }
      expect(await h.redis.zscore(webhooks.dlvIndex(scope), d.id)).not.toBeNull()
    }
    const after = await webhooks.getDelivery(d.id)
    expect(after?.status).toBe('succeeded')
    expect(after?.attempts).toBe(3)
    expect(await webhooks.attempts(d.id)).toHaveLength(3)
  })
})
