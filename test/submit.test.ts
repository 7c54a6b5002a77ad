/**
 * The submit queue end to end: the real app, the run's real redis-server, the real simulator over loopback HTTP.
 * Faults happen on real sockets (resets, hangs, lost answers); no mocks, no fake timers, timing shrunk through env.
 * Every scenario ends in exactly one upstream task for the internal task, or in a failed task whose error carries
 * upstream's reason, and never in two paid upstream tasks for one request.
 */
import { describe, it, expect, afterEach, afterAll } from 'vitest'
import { randomBytes } from 'node:crypto'
import { Simulator, type SimTask } from '../simulator/app.ts'
import { verifyCallbackToken } from '../src/domain/callback-token.ts'
import type { TaskView } from '../src/domain/task.ts'
import { auth, KEYS, startHarness, type Harness } from './helpers/harness.ts'
import { makePng } from './helpers/images.ts'

const PUBLIC_BASE_URL = 'https://gateway.example.test'
/** Short deadlines so timeouts and graces pass in a few hundred milliseconds. */
const FAST = {
  UPSTREAM_TIMEOUT_MS: '300', UPSTREAM_RETRY_BASE_MS: '20', SUBMIT_UNCONFIRMED_GRACE_MS: '200', PUBLIC_BASE_URL
}
/** A real Base64 PNG, so the parked-image path is part of every submit. */
const IMAGE = makePng(320, 320).toString('base64')

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  const pending = cleanups.splice(0).reverse()
  for (const cleanup of pending) await cleanup()
})

/**
 * Tests on the default FAST env share one app (starting one takes a few hundred ms): every test leaves its tasks
 * settled, so nothing of it is still talking upstream, and the simulator is reset for the next. Any other env gets
 * an app of its own, closed after the test.
 */
let shared: Harness | undefined
afterAll(async () => { await shared?.close() })

async function harness (env?: Record<string, string>, simulator?: Simulator): Promise<Harness> {
  if (env === undefined && simulator === undefined) {
    shared ??= await startHarness({ env: FAST, sim: { auto: false } })
    shared.sim.reset()
    return shared
  }
  const h = await startHarness({ env: { ...FAST, ...env }, sim: { auto: false }, simulator })
  cleanups.push(h.close)
  return h
}

async function createTask (h: Harness): Promise<string> {
  const res = await h.app.inject({
    method: 'POST',
    url: '/v1/videos',
    headers: auth('alice'),
    payload: { image_list: [{ image: IMAGE }, { image: 'https://example.com/b.png' }], prompt: 'two cats walk toward the camera' }
  })
  expect(res.statusCode, res.body).toBe(202)
  return res.json<TaskView>().id
}

async function getTask (h: Harness, id: string): Promise<TaskView> {
  const res = await h.app.inject({ method: 'GET', url: `/v1/videos/${id}`, headers: auth('alice') })
  expect(res.statusCode, res.body).toBe(200)
  return res.json<TaskView>()
}

const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

/** Polls the task (at most `tries` × 50 ms) until it leaves `queued`. */
async function settled (h: Harness, id: string, tries = 100): Promise<TaskView> {
  let task = await getTask(h, id)
  for (let i = 0; i < tries && task.status === 'queued'; i++) {
    await sleep(50)
    task = await getTask(h, id)
  }
  expect(task.status, `task ${id} never left queued`).not.toBe('queued')
  return task
}

async function externalId (h: Harness, id: string): Promise<string> {
  const ext = await h.redis.hget(`{${h.prefix}}:task:${id}`, 'external_task_id')
  expect(ext).toMatch(/^[0-9a-f-]{36}$/)
  return ext as string
}

/** The simulator's tasks whose callback_url names our task. */
function simTasksOf (sim: Simulator, id: string): SimTask[] {
  return [...sim.tasks.values()].filter(t => t.callback_url?.includes(`.${id}.`) === true)
}

/** Submitted, and backed by exactly one upstream task, the one whose id the task shows. */
async function expectOneUpstreamTask (h: Harness, id: string, task: TaskView): Promise<SimTask> {
  const ext = await externalId(h, id)
  expect(task.status, JSON.stringify(task.error)).toBe('submitted')
  expect(h.sim.acceptedFor(ext)).toBe(1)
  const [up, ...more] = simTasksOf(h.sim, id)
  expect(more).toEqual([])
  expect(up.external_task_id).toBe(ext)
  expect(task.upstream).toMatchObject({ task_id: up.task_id, status: 'submitted' })
  expect(task.error).toBeNull()
  // Upstream has the images now: the parked copy is dropped right after the transition (poll: it is a separate step).
  let parked = 1
  for (let i = 0; i < 100 && parked !== 0; i++) {
    parked = await h.redis.exists(`{${h.prefix}}:task:${id}:parked`)
    if (parked !== 0) await new Promise(resolve => setTimeout(resolve, 20))
  }
  expect(parked).toBe(0)
  return up
}

/** Failed with `code`, upstream's `reason` in the message, and nothing upstream. */
async function expectFailed (h: Harness, id: string, task: TaskView, code: string, reason: string): Promise<void> {
  expect(task.status).toBe('failed')
  expect(task.error?.code).toBe(code)
  expect(task.error?.message).toContain(reason)
  expect(task.error?.message).not.toContain(KEYS.comet)
  expect(task.upstream).toBeNull()
  expect(h.sim.acceptedFor(await externalId(h, id))).toBe(0)
  expect(await h.redis.exists(`{${h.prefix}}:task:${id}:parked`)).toBe(0)
}

describe('submit queue: success and retries', () => {
  it('submits a task once, with our callback_url and external_task_id', async () => {
    const h = await harness()
    const id = await createTask(h)
    const task = await settled(h, id)
    const up = await expectOneUpstreamTask(h, id, task)
    expect(h.sim.counts.creates).toBe(1)
    expect(h.sim.counts.queries).toBe(0)

    const callback = new URL(up.callback_url ?? '')
    expect(`${callback.origin}${callback.pathname}`).toBe(`${PUBLIC_BASE_URL}/callbacks/kling`)
    expect(verifyCallbackToken(KEYS.callbackSecret, callback.searchParams.get('token') ?? '')).toBe(id)
    expect(up.body).toMatchObject({
      prompt: 'two cats walk toward the camera',
      model_name: 'kling-v1-6',
      external_task_id: up.external_task_id,
      callback_url: up.callback_url
    })
    expect(up.body).not.toHaveProperty('webhook_url')
  })

  it('retries after two 503s and ends with one upstream task', async () => {
    const h = await harness()
    h.sim.inject({ on: 'create', kind: 'http-error', status: 503, message: 'no available channel', times: 2 })
    const id = await createTask(h)
    const task = await settled(h, id)
    await expectOneUpstreamTask(h, id, task)
    expect(h.sim.counts.creates).toBe(3)
  })

  it('honours Retry-After on a 429 before sending again', async () => {
    const h = await harness()
    h.sim.inject({ on: 'create', kind: 'rate-limit', retryAfter: 1 })
    const id = await createTask(h)
    const task = await settled(h, id)
    await expectOneUpstreamTask(h, id, task)
    const [first, second, ...rest] = h.sim.createLog
    expect(rest).toEqual([])
    expect(second.at - first.at).toBeGreaterThanOrEqual(990)
    expect(second.at - first.at).toBeLessThan(3000)
    // A 429 certainly made nothing: the retry sends without asking first.
    expect(h.sim.counts.queries).toBe(0)
  })

  it('retries a create whose connection was reset before any answer', async () => {
    const h = await harness()
    h.sim.inject({ on: 'create', kind: 'reset' })
    const id = await createTask(h)
    const task = await settled(h, id)
    await expectOneUpstreamTask(h, id, task)
    expect(h.sim.counts.creates).toBe(2)
    // A reset may have made a task: upstream was asked before the second create.
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(1)
  })

  it('retries a create that timed out before any header came', async () => {
    const h = await harness()
    h.sim.inject({ on: 'create', kind: 'hang' })
    const id = await createTask(h)
    const task = await settled(h, id)
    await expectOneUpstreamTask(h, id, task)
    expect(h.sim.counts.creates).toBe(2)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(1)
  })
})

describe('submit queue: a create upstream took but whose answer was lost', () => {
  it.each(['accept-then-hang', 'accept-then-reset'] as const)('%s: adopts the task found by external_task_id, ' +
    'sends no second create', async (kind) => {
    const h = await harness()
    h.sim.inject({ on: 'create', kind })
    const id = await createTask(h)
    const task = await settled(h, id)
    await expectOneUpstreamTask(h, id, task)
    expect(h.sim.counts.creates).toBe(1)
    expect(h.sim.counts.accepted).toBe(1)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(1)
  })

  it('waits out "task not found" right after an accepted create that timed out, then adopts', async () => {
    // The grace is shorter than the timeout, so it only helps if it is counted from when the call ended. It is wide
    // enough for three looks: BullMQ re-runs a delayed job about every 100 ms at best (Redis's timer resolution).
    const h = await harness({ UPSTREAM_TIMEOUT_MS: '700', SUBMIT_UNCONFIRMED_GRACE_MS: '600' })
    h.sim.inject({ on: 'create', kind: 'accept-then-hang' })
    h.sim.inject({ on: 'query', kind: 'not-found', times: 2 })
    const id = await createTask(h)
    const task = await settled(h, id)
    await expectOneUpstreamTask(h, id, task)
    expect(h.sim.counts.creates).toBe(1)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(3)
  })

  it.each(['reset', 'hang'] as const)('a query that fails (%s) after an accepted create ' +
    'does not license a second create', async (kind) => {
    const h = await harness()
    h.sim.inject({ on: 'create', kind: 'accept-then-reset' })
    h.sim.inject({ on: 'query', kind })
    const id = await createTask(h)
    const task = await settled(h, id)
    await expectOneUpstreamTask(h, id, task)
    expect(h.sim.counts.creates).toBe(1)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(2)
  })
})

describe('submit queue: failures', () => {
  it('fails on Kling 1301 (content safety) without retrying, with upstream\'s message', async () => {
    const h = await harness()
    h.sim.inject({
      on: 'create',
      kind: 'kling-error',
      status: 400,
      code: 1301,
      message: 'content security policy: the input was flagged'
    })
    const id = await createTask(h)
    const task = await settled(h, id)
    await expectFailed(h, id, task, 'KLING_1301', 'content security policy: the input was flagged')
    expect(h.sim.counts.creates).toBe(1)
  })

  it('fails with UPSTREAM_UNAVAILABLE when 503s outlast UPSTREAM_SUBMIT_ATTEMPTS, ' +
    'and nothing is upstream', async () => {
    const h = await harness({ UPSTREAM_SUBMIT_ATTEMPTS: '3' })
    h.sim.inject({
      on: 'create', kind: 'http-error', status: 503, message: 'no available channel for group default', times: 10
    })
    const id = await createTask(h)
    const task = await settled(h, id)
    await expectFailed(h, id, task, 'UPSTREAM_UNAVAILABLE', 'no available channel for group default')
    expect(h.sim.counts.creates).toBeGreaterThanOrEqual(1)
    expect(h.sim.counts.creates).toBeLessThanOrEqual(3)
    expect(h.sim.tasks.size).toBe(0)
  })

  it('fails with UPSTREAM_UNAVAILABLE when the last attempt times out too, after one more look upstream', async () => {
    const h = await harness({ UPSTREAM_SUBMIT_ATTEMPTS: '2' })
    h.sim.inject({ on: 'create', kind: 'hang', times: 10 })
    const id = await createTask(h)
    const task = await settled(h, id)
    await expectFailed(h, id, task, 'UPSTREAM_UNAVAILABLE', 'did not answer within 300 ms')
    expect(h.sim.counts.creates).toBeLessThanOrEqual(2)
    // The last create timed out: upstream was asked again before the task was failed.
    const lastCreate = h.sim.createLog.at(-1)?.at ?? 0
    expect(new Date(task.updated_at).getTime()).toBeGreaterThanOrEqual(lastCreate + 300)
  })
})

describe('submit queue: concurrency', () => {
  it('never has more than UPSTREAM_CONCURRENCY creates in flight', async () => {
    const h = await harness({ UPSTREAM_CONCURRENCY: '2', UPSTREAM_TIMEOUT_MS: '500' })
    h.sim.inject({ on: 'create', kind: 'hang', times: 6 })
    const ids: string[] = []
    for (let i = 0; i < 6; i++) ids.push(await createTask(h))
    for (const id of ids) await expectOneUpstreamTask(h, id, await settled(h, id, 200))
    expect(h.sim.maxInFlight).toBeGreaterThanOrEqual(1)
    expect(h.sim.maxInFlight).toBeLessThanOrEqual(2)
    expect(h.sim.counts.accepted).toBe(6)
  })

  it('two app instances on one Redis prefix submit every task exactly once', async () => {
    const sim = new Simulator({ apiKey: KEYS.comet, auto: false })
    await sim.listen()
    cleanups.push(async () => { await sim.close() })
    const env = { REDIS_PREFIX: `t${randomBytes(6).toString('hex')}` }
    const a = await harness(env, sim)
    const b = await harness(env, sim)
    // Lost answers too, so an adoption may happen on either instance.
    sim.inject({ on: 'create', kind: 'accept-then-reset', times: 2 })
    const ids = await Promise.all(Array.from({ length: 10 }, async (_, i) => await createTask(i % 2 === 0 ? a : b)))
    for (const [i, id] of ids.entries()) await expectOneUpstreamTask(a, id, await settled(i % 2 === 0 ? b : a, id))
    expect(sim.counts.accepted).toBe(10)
    expect(sim.counts.creates).toBe(10)
    expect(new Set(sim.createLog.map(c => c.externalTaskId)).size).toBe(10)
  })
})
