/**
 * Account-wide refusals pause the submit queue instead of failing tasks (docs/API.md, "Upstream account problems"):
 * an empty wallet, a revoked key, Kling's account codes. The real app against the real simulator over loopback HTTP
 * and the run's real redis-server; the simulator's account state is switched as an operator's top-up or key rotation
 * would. Every test checks that nothing failed, nothing was paid twice, and the pause was logged once per change.
 */
import { describe, it, expect, afterEach } from 'vitest'
import { randomBytes } from 'node:crypto'
import { Simulator, type SimShapes } from '../simulator/app.ts'
import type { TaskView } from '../src/domain/task.ts'
import { auth, KEYS, KLING_ENV, startHarness, type Harness } from './helpers/harness.ts'
import { createTask, getTask, waitFor } from './helpers/tasks.ts'

/** Short timings: a pause check every 200 ms, so a paused queue resumes within about half a second. */
const FAST = {
  UPSTREAM_TIMEOUT_MS: '1000',
  UPSTREAM_RETRY_BASE_MS: '20',
  SUBMIT_UNCONFIRMED_GRACE_MS: '200',
  UPSTREAM_PAUSE_CHECK_MS: '200'
}

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

interface Opts { simulator?: Simulator, shapes?: Partial<SimShapes> }

async function harness (env: Record<string, string> = {}, opts: Opts = {}): Promise<Harness> {
  const sim = { auto: false, shapes: opts.shapes }
  const h = await startHarness({ env: { ...FAST, ...env }, sim, simulator: opts.simulator })
  cleanups.push(h.close)
  return h
}

const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

/** Lines of the log whose `msg` matches. */
function logLines (h: Harness, msg: RegExp): Array<Record<string, unknown>> {
  return h.logs.lines.map(l => JSON.parse(l) as Record<string, unknown>)
    .filter(l => typeof l.msg === 'string' && msg.test(l.msg))
}
const PAUSED = /submit queue is paused/
const RESUMED = /submit queue is resumed/

async function ready (h: Harness): Promise<{ statusCode: number, body: Record<string, unknown> }> {
  const res = await h.app.inject('/health/ready')
  return { statusCode: res.statusCode, body: res.json() }
}

/** Polls readiness until `done` holds (at most 5 s). */
async function readyUntil (h: Harness, done: (body: Record<string, unknown>) => boolean):
Promise<Record<string, unknown>> {
  let r = await ready(h)
  for (let i = 0; i < 200 && !done(r.body); i++) {
    await sleep(25)
    r = await ready(h)
  }
  expect(r.statusCode).toBe(200)
  return r.body
}

async function metric (h: Harness, line: RegExp): Promise<boolean> {
  return line.test((await h.app.inject('/metrics')).body)
}

/** A paused queue: every task still queued, none failed, nothing upstream, readiness 200 and saying why. */
async function expectPaused (h: Harness, ids: string[], reason: string, code: string): Promise<void> {
  const body = await readyUntil(h, b => b.upstream !== undefined)
  expect(body).toMatchObject({ status: 'ok', redis: 'ok', upstream: { status: 'paused', reason, code } })
  expect(JSON.stringify(body)).not.toContain(KEYS.comet)
  // Long enough for every job to have been tried and kept out a few times.
  await sleep(600)
  for (const id of ids) {
    const task = await getTask(h, id)
    expect(task.status, JSON.stringify(task.error)).toBe('queued')
    expect(task.error).toBeNull()
    expect(task.attention).toBeNull()
  }
  expect(h.sim.counts.accepted).toBe(0)
  expect(await metric(h, new RegExp(`kg_upstream_paused\\{reason="${reason}"\\} 1`))).toBe(true)
  expect(logLines(h, PAUSED)).toHaveLength(1)
  expect(logLines(h, PAUSED)[0]).toMatchObject({ level: 50, reason, code })
}

/** After the account is fixed: every task submitted exactly once, readiness without `upstream`, one resume line. */
async function expectResumed (h: Harness, ids: string[]): Promise<void> {
  for (const id of ids) {
    const task = await waitFor(h, id, t => t.status !== 'queued', 5000)
    expect(task.status, JSON.stringify(task.error)).toBe('submitted')
  }
  expect(h.sim.counts.accepted).toBe(ids.length)
  expect(new Set(h.sim.createLog.filter(c => c.taskId !== null).map(c => c.externalTaskId)).size).toBe(ids.length)
  const body = await readyUntil(h, b => b.upstream === undefined)
  expect(body).toEqual({ status: 'ok', redis: 'ok' })
  expect(await metric(h, /kg_upstream_paused\{reason="balance"\} 0/)).toBe(true)
  expect(logLines(h, RESUMED)).toHaveLength(1)
}

describe('an empty wallet pauses the submit queue; none of the queued tasks fails', () => {
  it('CometAPI\'s 403 insufficient_user_quota: paused (balance), a trial resumes it after a top-up', async () => {
    const h = await harness()
    h.sim.account = 'balance'
    const ids = [(await createTask(h)).id, (await createTask(h)).id, (await createTask(h)).id]
    await expectPaused(h, ids, 'balance', 'COMET_insufficient_user_quota')
    // Kept out while paused: only the first refusals and the trials reached upstream, not a retry storm.
    expect(h.sim.counts.creates).toBeLessThan(12)

    h.sim.account = 'ok'
    await expectResumed(h, ids)
  })

  it('new-api\'s flat 402 {code: "insufficient_user_quota"}: paused the same way, its message kept', async () => {
    const h = await harness({}, { shapes: { errors: 'new-api' } })
    h.sim.account = 'balance'
    const { id } = await createTask(h)
    await expectPaused(h, [id], 'balance', 'COMET_insufficient_user_quota')
    expect(logLines(h, PAUSED)[0].message).toBe('user quota is not enough')
    h.sim.account = 'ok'
    await expectResumed(h, [id])
  })

  it('new-api\'s 403 pre_consume_token_quota_failed (the key\'s own quota) is a balance problem too', async () => {
    const h = await harness()
    h.sim.inject({
      on: 'create',
      kind: 'new-api-error',
      status: 403,
      code: 'pre_consume_token_quota_failed',
      message: 'token quota is not enough',
      times: 2
    })
    const { id } = await createTask(h)
    const task = await waitFor(h, id, t => t.status !== 'queued', 5000)
    // The two refusals paused the queue; the trial after them went through.
    expect(task.status, JSON.stringify(task.error)).toBe('submitted')
    expect(logLines(h, PAUSED)).toHaveLength(1)
    expect(logLines(h, PAUSED)[0]).toMatchObject({ reason: 'balance', code: 'COMET_pre_consume_token_quota_failed' })
    expect(logLines(h, RESUMED)).toHaveLength(1)
    expect(h.sim.counts.accepted).toBe(1)
  })
})

describe('a revoked key pauses the submit queue; a key check resumes it', () => {
  it('401 on every request: paused (key), checked by a query every UPSTREAM_PAUSE_CHECK_MS, resumed', async () => {
    const h = await harness()
    h.sim.account = 'key'
    const ids = [(await createTask(h)).id, (await createTask(h)).id]
    await expectPaused(h, ids, 'key', 'UPSTREAM_HTTP_401')
    // The key check is a query (free), not a create: creates stay at the first refusals.
    const creates = h.sim.counts.creates
    const queries = h.sim.counts.queries
    await sleep(500)
    expect(h.sim.counts.queries).toBeGreaterThan(queries)
    expect(h.sim.counts.creates).toBe(creates)

    h.sim.account = 'ok'
    await expectResumed(h, ids)
    expect(logLines(h, RESUMED)[0]).toMatchObject({ evidence: 'a query with the key was answered' })
  })

  it('a 403 naming the key ("token expired") is a key problem; a 403 about the request is not', async () => {
    const h = await harness()
    h.sim.inject({ on: 'create', kind: 'http-error', status: 403, message: 'this token has expired' })
    const { id } = await createTask(h)
    await waitFor(h, id, t => t.status !== 'queued', 5000)
    expect(logLines(h, PAUSED)[0]).toMatchObject({ reason: 'key', code: 'UPSTREAM_HTTP_403' })
    expect((await getTask(h, id)).status).toBe('submitted')

    h.sim.inject({
      on: 'create', kind: 'http-error', status: 403, code: 'unsupported_field', message: 'field not allowed'
    })
    const other = await waitFor(h, (await createTask(h)).id, t => t.status !== 'queued', 5000)
    expect(other.status).toBe('failed')
    expect(other.error).toEqual({
      code: 'COMET_unsupported_field', message: expect.stringContaining('field not allowed')
    })
    expect(logLines(h, PAUSED)).toHaveLength(1)
  })
})

describe('Kling\'s own account codes', () => {
  it('a wrong KLING_SECRET_KEY (1002) pauses (key) instead of failing the task; nothing is made', async () => {
    const h = await harness({ ...KLING_ENV, KLING_SECRET_KEY: `${KEYS.klingSecret}-but-wrong` })
    const { id } = await createTask(h)
    await expectPaused(h, [id], 'key', 'KLING_1002')
    expect(h.sim.tokensSeen).toEqual([])
  })

  it('a resource pack exhausted (1102) pauses (account), and a trial resumes it', async () => {
    const h = await harness(KLING_ENV)
    h.sim.account = 'balance'
    const { id } = await createTask(h)
    await expectPaused(h, [id], 'account', 'KLING_1102')
    h.sim.account = 'ok'
    await expectResumed(h, [id])
  })
})

describe('the pause holds for every replica', () => {
  it('paused by one instance, the other sends nothing either; both resume', async () => {
    const sim = new Simulator({ apiKey: KEYS.comet, auto: false })
    await sim.listen()
    cleanups.push(async () => { await sim.close() })
    const env = { REDIS_PREFIX: `t${randomBytes(6).toString('hex')}` }
    const a = await harness(env, { simulator: sim })
    const b = await harness(env, { simulator: sim })
    sim.account = 'balance'
    const first: TaskView = await createTask(a)
    await readyUntil(b, body => body.upstream !== undefined)
    const creates = sim.counts.creates
    const more = [(await createTask(b)).id, (await createTask(a)).id, (await createTask(b)).id]
    await sleep(600)
    // Only trials (one per check, for both instances together) reached upstream.
    expect(sim.counts.creates - creates).toBeLessThanOrEqual(4)
    for (const id of [first.id, ...more]) expect((await getTask(b, id)).status).toBe('queued')
    expect(logLines(a, PAUSED).length + logLines(b, PAUSED).length).toBe(1)

    sim.account = 'ok'
    for (const id of [first.id, ...more]) {
      expect((await waitFor(a, id, t => t.status !== 'queued', 5000)).status).toBe('submitted')
    }
    expect(sim.counts.accepted).toBe(4)
    expect((await ready(b)).body).toEqual({ status: 'ok', redis: 'ok' })
    expect(logLines(a, RESUMED).length + logLines(b, RESUMED).length).toBe(1)
  })

  it('reads and creates are still served while paused', async () => {
    const h = await harness()
    h.sim.account = 'key'
    const { id } = await createTask(h)
    await readyUntil(h, body => body.upstream !== undefined)
    expect((await h.app.inject({ url: `/v1/videos/${id}`, headers: auth('alice') })).statusCode).toBe(200)
    expect((await h.app.inject({ url: '/v1/videos', headers: auth('alice') })).statusCode).toBe(200)
    const second = await createTask(h)
    expect(second.status).toBe('queued')
    // Never sent, so still cancelable.
    const url = `/v1/videos/${second.id}/cancel`
    const canceled = await h.app.inject({ method: 'POST', url, headers: auth('alice') })
    expect(canceled.statusCode, canceled.body).toBe(200)
  })
})
