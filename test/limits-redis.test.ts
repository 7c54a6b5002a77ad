/**
 * Per-caller limits kept in Redis (docs/API.md, "Per-caller limits"): the create token bucket, max_active_tasks and
 * daily_units checked by the create script, max_webhook_endpoints, the fan-out past 1,000 endpoints, GET /v1/usage
 * and the caller metrics. The real app, a real redis-server and the simulator; two harnesses on one REDIS_PREFIX
 * play two replicas of one deployment.
 */
import { describe, it, expect } from 'vitest'
import { randomBytes } from 'node:crypto'
import { auth, harnessPerTest, type Harness } from './helpers/harness.ts'
import { validBody } from './helpers/tasks.ts'
import { keys } from '../src/store/keys.ts'
import { secondsToUtcMidnight, utcDay } from '../src/services/limits.ts'

const startHarness = harnessPerTest()
const limitsEnv = (limits: Record<string, Record<string, number>>, over: Record<string, string> = {}) =>
  ({ env: { CALLER_LIMITS: JSON.stringify(limits), RECONCILE_INTERVAL_MS: '600000', ...over } })

type Who = 'alice' | 'bob' | 'ops'
const create = async (h: Harness, who: Who = 'alice', over: Record<string, unknown> = {}, key?: string) =>
  await h.app.inject({
    method: 'POST',
    url: '/v1/videos',
    headers: { ...auth(who), ...(key !== undefined && { 'idempotency-key': key }) },
    payload: validBody(over)
  })
const usage = async (h: Harness, who: Who, query = '') =>
  await h.app.inject({ url: `/v1/usage${query}`, headers: auth(who) })
const cancel = async (h: Harness, id: string) =>
  await h.app.inject({ method: 'POST', url: `/v1/videos/${id}/cancel`, headers: auth('alice') })
const sleep = async (ms: number) => { await new Promise(resolve => setTimeout(resolve, ms)) }
async function until (check: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  for (let waited = 0; !await check() && waited < ms; waited += 25) await sleep(25)
}

/** Asserts a 429 CALLER_LIMIT naming `limit` and `value`; returns its Retry-After in seconds. */
function refused (res: Awaited<ReturnType<typeof create>>, limit: string, value: number): number {
  expect(res.statusCode, res.body).toBe(429)
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/)
  expect(res.json()).toMatchObject({ code: 'CALLER_LIMIT', status: 429, limit, limit_value: value })
  const retryAfter = Number(res.headers['retry-after'])
  expect(retryAfter).toBeGreaterThanOrEqual(1)
  return retryAfter
}

describe('creates_per_minute', () => {
  it('refuses the create past the bucket, sends nothing upstream for it, and a replay costs no token', async () => {
    const h = await startHarness({ sim: { auto: false }, ...limitsEnv({ alice: { creates_per_minute: 3 } }) })
    for (let i = 0; i < 3; i++) expect((await create(h, 'alice', {}, `k${i}`)).statusCode).toBe(202)
    // 3 a minute: one token every 20 s, and the bucket is empty.
    const retryAfter = refused(await create(h, 'alice', {}, 'k3'), 'creates_per_minute', 3)
    expect(retryAfter).toBeGreaterThan(15)
    expect(retryAfter).toBeLessThanOrEqual(20)
    // A replay of a create that made its task is answered, not refused: it makes nothing.
    const replay = await create(h, 'alice', {}, 'k0')
    expect(replay.statusCode).toBe(202)
    expect(replay.headers['idempotent-replayed']).toBe('true')
    await until(() => h.sim.counts.accepted >= 3)
    await sleep(200)
    expect(h.sim.counts.creates).toBe(3)
    // bob has the default (120): not limited by alice's bucket.
    expect((await create(h, 'bob')).statusCode).toBe(202)
  })

  it('takes the per-caller override over the global default, and 0 is no limit', async () => {
    const h = await startHarness(limitsEnv({ alice: { creates_per_minute: 0 }, bob: { creates_per_minute: 4 } },
      { CALLER_CREATES_PER_MINUTE: '2' }))
    for (let i = 0; i < 12; i++) expect((await create(h, 'alice')).statusCode).toBe(202)
    for (let i = 0; i < 4; i++) expect((await create(h, 'bob')).statusCode).toBe(202)
    refused(await create(h, 'bob'), 'creates_per_minute', 4)
    // ops has no override: the global 2.
    for (let i = 0; i < 2; i++) expect((await create(h, 'ops')).statusCode).toBe(202)
    refused(await create(h, 'ops'), 'creates_per_minute', 2)
  })

  it('is one bucket for two replicas on the same REDIS_PREFIX', async () => {
    const opts = limitsEnv({ alice: { creates_per_minute: 4 } }, { REDIS_PREFIX: `t${randomBytes(6).toString('hex')}` })
    const one = await startHarness({ ...opts, keepKeys: true })
    const two = await startHarness(opts)
    expect((await create(one)).statusCode).toBe(202)
    expect((await create(two)).statusCode).toBe(202)
    expect((await create(one)).statusCode).toBe(202)
    expect((await create(two)).statusCode).toBe(202)
    refused(await create(one), 'creates_per_minute', 4)
    refused(await create(two), 'creates_per_minute', 4)
  })
})

describe('max_active_tasks', () => {
  it('makes exactly 5 of 20 concurrent creates, across two replicas, and submits only those', async () => {
    const opts = limitsEnv({ alice: { max_active_tasks: 5 } }, { REDIS_PREFIX: `t${randomBytes(6).toString('hex')}` })
    const one = await startHarness({ ...opts, sim: { auto: false }, keepKeys: true })
    const two = await startHarness({ ...opts, simulator: one.sim, workers: false })
    const answers = await Promise.all(Array.from({ length: 20 }, async (_, i) => await create(i % 2 === 0 ? one : two)))
    const made = answers.filter(r => r.statusCode === 202)
    expect(made).toHaveLength(5)
    for (const r of answers.filter(r => r.statusCode !== 202)) {
      expect(refused(r, 'max_active_tasks', 5)).toBe(15)
    }
    await until(() => one.sim.counts.accepted >= 5)
    await sleep(200)
    expect(one.sim.counts.creates).toBe(5)
    expect((await usage(two, 'alice')).json().data[0].active_tasks).toBe(5)
  })

  it('frees a slot when a task ends (here: canceled while queued)', async () => {
    const h = await startHarness({ workers: false, ...limitsEnv({ alice: { max_active_tasks: 2 } }) })
    const first = await create(h)
    expect(first.statusCode).toBe(202)
    expect((await create(h)).statusCode).toBe(202)
    refused(await create(h), 'max_active_tasks', 2)
    expect((await create(h, 'bob')).statusCode).toBe(202)
    expect((await cancel(h, first.json().id)).statusCode).toBe(200)
    expect((await create(h)).statusCode).toBe(202)
  })
})

describe('daily_units', () => {
  it('charges units by mode × duration, refuses past the budget until midnight, gives a cancel\'s back', async () => {
    // Queued tasks stay queued (no workers), so they can be canceled before anything is sent.
    const h = await startHarness({ workers: false, ...limitsEnv({ alice: { daily_units: 10 } }) })
    const pro = await create(h, 'alice', { mode: 'pro', duration: '10' }) // 7 units
    expect(pro.statusCode, pro.body).toBe(202)
    for (let i = 0; i < 3; i++) expect((await create(h, 'alice')).statusCode).toBe(202) // 1 each: 10
    const res = await create(h, 'alice')
    const retryAfter = refused(res, 'daily_units', 10)
    expect(Math.abs(retryAfter - secondsToUtcMidnight(Date.now()))).toBeLessThanOrEqual(2)
    let row = (await usage(h, 'alice')).json().data[0]
    expect(row).toMatchObject({ caller: 'alice', date: utcDay(Date.now()), tasks: 4, units: 10, active_tasks: 4 })
    // Canceled while queued: never sent upstream, so its 7 units come back; the task still counts as created.
    expect((await cancel(h, pro.json().id)).statusCode).toBe(200)
    row = (await usage(h, 'alice')).json().data[0]
    expect(row).toMatchObject({ tasks: 4, units: 3, active_tasks: 3 })
    expect((await create(h, 'alice', { mode: 'pro', duration: '5' })).statusCode).toBe(202) // 3.5
    expect((await usage(h, 'alice')).json().data[0].units).toBe(6.5)
    // The day's counter expires on its own.
    const ttl = await h.redis.pttl(keys(h.prefix).usage('alice', utcDay(Date.now())))
    expect(ttl).toBeGreaterThan(24 * 3600_000)
    expect(ttl).toBeLessThanOrEqual(2 * 24 * 3600_000)
  })
})

describe('max_webhook_endpoints', () => {
  const register = async (h: Harness, who: Who, i: number) => await h.app.inject({
    method: 'POST', url: '/v1/webhook-endpoints', headers: auth(who), payload: { url: `http://127.0.0.1:9/hook/${i}` }
  })

  it('registers exactly the limit of concurrent registrations; a delete frees one', async () => {
    const h = await startHarness(limitsEnv({ alice: { max_webhook_endpoints: 3 } }))
    const answers = await Promise.all(Array.from({ length: 10 }, async (_, i) => await register(h, 'alice', i)))
    const made = answers.filter(r => r.statusCode === 201)
    expect(made).toHaveLength(3)
    for (const r of answers.filter(r => r.statusCode !== 201)) refused(r, 'max_webhook_endpoints', 3)
    const del = await h.app.inject({
      method: 'DELETE', url: `/v1/webhook-endpoints/${made[0].json().id}`, headers: auth('alice')
    })
    expect(del.statusCode).toBe(204)
    expect((await register(h, 'alice', 99)).statusCode).toBe(201)
    // The default (20) for bob, untouched by alice's.
    expect((await register(h, 'bob', 0)).statusCode).toBe(201)
  })

  it('fans one event out to every one of 1,001 endpoints', async () => {
    const h = await startHarness(limitsEnv({ bob: { max_webhook_endpoints: 0 } }, {
      // The first attempt waits 10 minutes: this test counts the deliveries made, not their attempts.
      WEBHOOK_RETRY_SCHEDULE: '10m,10m'
    }))
    for (let batch = 0; batch < 1001; batch += 50) {
      const n = Math.min(50, 1001 - batch)
      const answers = await Promise.all(Array.from({ length: n }, async (_, i) => await register(h, 'bob', batch + i)))
      for (const r of answers) expect(r.statusCode).toBe(201)
    }
    const task = await create(h, 'bob')
    expect(task.statusCode).toBe(202)
    // video.queued, then (submitted upstream) video.submitted: each event is one delivery per endpoint (the two
    // events are fanned out at once, so both are waited for).
    const index = keys(h.prefix).deliveries({ caller: 'bob' })
    await until(async () => await h.redis.zcard(index) >= 2002, 20_000)
    const ids = await h.redis.zrange(index, '0', '-1')
    const types = await Promise.all(ids.map(async id => await h.redis.hmget(keys(h.prefix).delivery(id), 'type',
      'endpoint_id')))
    for (const type of ['video.queued', 'video.submitted']) {
      expect(new Set(types.filter(([t]) => t === type).map(([, ep]) => ep)).size, type).toBe(1001)
    }
  }, 30_000)
})

describe('GET /v1/usage and the metrics', () => {
  it('shows a caller its own row only and an admin every caller\'s; the metrics count units and refusals', async () => {
    const h = await startHarness({
      workers: false,
      ...limitsEnv({ alice: { creates_per_minute: 2, weight: 3 } }, { CALLER_DAILY_UNITS: '100' })
    })
    expect((await create(h, 'alice', { mode: 'pro', duration: '5' })).statusCode).toBe(202)
    expect((await create(h, 'alice')).statusCode).toBe(202)
    refused(await create(h, 'alice'), 'creates_per_minute', 2)

    const own = await usage(h, 'alice')
    expect(own.statusCode).toBe(200)
    expect(own.json().data).toEqual([{
      caller: 'alice',
      date: utcDay(Date.now()),
      tasks: 2,
      units: 4.5,
      active_tasks: 2,
      webhook_endpoints: 0,
      limits: {
        creates_per_minute: 2,
        max_active_tasks: 500,
        max_large_bodies: 1,
        max_sse_streams: 100,
        max_webhook_endpoints: 20,
        daily_units: 100,
        weight: 3
      }
    }])
    expect((await usage(h, 'alice', '?caller=alice')).json().data[0].caller).toBe('alice')
    // Another caller's row is 404, as another caller's task is.
    const other = await usage(h, 'bob', '?caller=alice')
    expect(other.statusCode).toBe(404)
    expect(other.json().code).toBe('NOT_FOUND')
    expect((await usage(h, 'bob')).json().data.map((r: { caller: string }) => r.caller)).toEqual(['bob'])

    const all = (await usage(h, 'ops')).json().data as Array<{ caller: string, tasks: number }>
    expect(all.map(r => r.caller)).toEqual(['alice', 'bob', 'ops', 'root'])
    expect(all.map(r => r.tasks)).toEqual([2, 0, 0, 0])
    expect((await usage(h, 'ops', '?caller=alice')).json().data[0].units).toBe(4.5)
    expect((await usage(h, 'ops', '?caller=no%20such')).statusCode).toBe(400)

    const metrics = (await h.app.inject({ url: '/metrics' })).body
    expect(metrics).toContain('kg_caller_units_total{caller="alice"} 4.5')
    expect(metrics).toContain('kg_caller_units_total{caller="bob"} 0')
    expect(metrics).toContain('kg_caller_limit_refusals_total{caller="alice",limit="creates_per_minute"} 1')
    expect(metrics).toContain('kg_caller_limit_refusals_total{caller="bob",limit="creates_per_minute"} 0')
  })
})
