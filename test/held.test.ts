/**
 * Never fail a task that may exist upstream (docs/API.md, "The task object", `attention`): a create whose outcome
 * is unknown is looked up by its external_task_id and adopted; when the look-up cannot answer, the task is held for
 * an operator, neither failed nor sent again, and `POST /v1/videos/{id}/resolve` ends the hold. And the deadline
 * rule: TASK_DEADLINE_MS never fails a create that may be on the wire, and a late upstream success after a deadline
 * failure is kept. The real app, the simulator over loopback HTTP, the run's real redis-server; no mocks.
 */
import { describe, it, expect, afterEach } from 'vitest'
import type { TaskView } from '../src/domain/task.ts'
import { Simulator, type SimOptions } from '../simulator/app.ts'
import { auth, startHarness, type Harness } from './helpers/harness.ts'
import { createTask, getTask, waitFor } from './helpers/tasks.ts'

const FAST = {
  UPSTREAM_TIMEOUT_MS: '300',
  UPSTREAM_RETRY_BASE_MS: '20',
  SUBMIT_UNCONFIRMED_GRACE_MS: '200',
  UPSTREAM_SUBMIT_ATTEMPTS: '3'
}

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

async function harness (env: Record<string, string> = {}, sim: SimOptions = {}, listen = false): Promise<Harness> {
  const h = await startHarness({ env: { ...FAST, ...env }, sim: { auto: false, ...sim }, listen })
  cleanups.push(h.close)
  return h
}

const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))
const externalId = async (h: Harness, id: string) =>
  await h.redis.hget(`{${h.prefix}}:task:${id}`, 'external_task_id') as string

async function resolve (h: Harness, id: string, body: Record<string, unknown>, who: 'root' | 'alice' = 'root') {
  return await h.app.inject({ method: 'POST', url: `/v1/videos/${id}/resolve`, headers: auth(who), payload: body })
}

async function heldTask (h: Harness, id: string): Promise<TaskView> {
  const task = await waitFor(h, id, t => t.attention !== null || t.status !== 'queued', 5000)
  expect(task.attention, JSON.stringify(task)).not.toBeNull()
  expect(task.status).toBe('queued')
  expect(task.error).toBeNull()
  return task
}

const heldLines = (h: Harness, id: string) => h.logs.lines.map(l => JSON.parse(l) as Record<string, unknown>)
  .filter(l => l.taskId === id && typeof l.msg === 'string' && l.msg.startsWith('task held for an operator'))

describe('a create whose outcome is unknown is looked up, not failed', () => {
  it('an unreadable 2xx (upstream made the task): found by its external_task_id and adopted', async () => {
    const h = await harness()
    h.sim.inject({ on: 'create', kind: 'accept-then-html' })
    const task = await waitFor(h, (await createTask(h)).id, t => t.status !== 'queued', 5000)
    expect(task.status, JSON.stringify(task.error)).toBe('submitted')
    expect(h.sim.counts.creates).toBe(1)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(1)
  })

  it('an unreadable 2xx that made nothing: failed with its code only once upstream says it has no task', async () => {
    const h = await harness()
    h.sim.inject({ on: 'create', kind: 'html' })
    const task = await waitFor(h, (await createTask(h)).id, t => t.status !== 'queued', 5000)
    expect(task.status).toBe('failed')
    expect(task.error?.code).toBe('UPSTREAM_NOT_JSON')
    expect(h.sim.counts.creates).toBe(1)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(1)
  })
})

describe('held: the look-up cannot confirm a create that may be upstream', () => {
  it('no look-up by external id: held (visible, listed, counted, logged once), not failed, not sent again',
    async () => {
      const h = await harness({ RECONCILE_INTERVAL_MS: '100', RECONCILE_AFTER_MS: '0' }, {
        shapes: { externalLookup: false }
      })
      h.sim.inject({ on: 'create', kind: 'accept-then-hang' })
      const { id } = await createTask(h)
      const task = await heldTask(h, id)
      expect(task.attention).toMatchObject({ code: 'CREATE_UNCONFIRMED', since: expect.any(String) })
      expect(task.attention?.message).toContain('UPSTREAM_HTTP_404')

      // Reconciliation keeps looking it up; nothing sends it again or fails it.
      const queries = h.sim.counts.queries
      await sleep(800)
      expect(h.sim.counts.queries).toBeGreaterThan(queries)
      expect(h.sim.counts.creates).toBe(1)
      expect((await getTask(h, id)).status).toBe('queued')
      expect(heldLines(h, id)).toHaveLength(1)
      expect(heldLines(h, id)[0]).toMatchObject({ level: 50, code: 'CREATE_UNCONFIRMED' })

      // Operators (and its own caller) list it; it may be paid for, so it cannot be canceled.
      const listed = await h.app.inject({ url: '/v1/videos?attention=true', headers: auth('ops') })
      expect(listed.json<{ data: TaskView[] }>().data.map(t => t.id)).toEqual([id])
      const own = await h.app.inject({ url: '/v1/videos?attention=true', headers: auth('alice') })
      expect(own.json<{ data: TaskView[] }>().data.map(t => t.id)).toEqual([id])
      const other = await h.app.inject({ url: '/v1/videos?attention=true', headers: auth('bob') })
      expect(other.json<{ data: TaskView[] }>().data).toEqual([])
      const both = await h.app.inject({ url: '/v1/videos?attention=true&status=queued', headers: auth('ops') })
      expect(both.statusCode).toBe(400)
      expect((await h.app.inject('/metrics')).body).toContain('kg_tasks_needing_attention 1')
      const cancel = await h.app.inject({ method: 'POST', url: `/v1/videos/${id}/cancel`, headers: auth('alice') })
      expect(cancel.statusCode).toBe(409)

      // The operator names the upstream task: a wrong one is refused, the right one adopted.
      expect((await resolve(h, id, { upstream_task_id: '861000000000000001' })).statusCode).toBe(422)
      const [made] = h.sim.tasks.values()
      expect((await resolve(h, id, { upstream_task_id: made.task_id }, 'alice')).statusCode).toBe(404)
      const adopted = await resolve(h, id, { upstream_task_id: made.task_id })
      expect(adopted.statusCode, adopted.body).toBe(200)
      expect(adopted.json()).toMatchObject({
        status: 'submitted', attention: null, upstream: { task_id: made.task_id }
      })
      expect((await h.app.inject('/metrics')).body).toContain('kg_tasks_needing_attention 0')
      expect((await resolve(h, id, { action: 'fail' })).json().code).toBe('NOT_HELD')
      h.sim.setStatus(made.task_id, 'succeed')
      expect((await waitFor(h, id, t => t.status === 'succeeded', 5000)).status).toBe('succeeded')
      expect(h.sim.counts.accepted).toBe(1)
    })

  it('resolve fails it (FAILED_BY_OPERATOR), or sends it again; bodies that mix actions are 400', async () => {
    const h = await harness({}, { shapes: { externalLookup: false } })
    // `hang`: nothing was made, yet nothing could say so.
    h.sim.inject({ on: 'create', kind: 'hang', times: 2 })
    const a = (await createTask(h)).id
    const b = (await createTask(h)).id
    await heldTask(h, a)
    await heldTask(h, b)
    expect((await resolve(h, a, {})).statusCode).toBe(400)
    expect((await resolve(h, a, { action: 'resend', upstream_task_id: '1' })).statusCode).toBe(400)
    expect((await resolve(h, a, { action: 'resend', message: 'x' })).statusCode).toBe(400)

    const failed = await resolve(h, a, { action: 'fail', message: 'checked the CometAPI dashboard: nothing there' })
    expect(failed.statusCode, failed.body).toBe(200)
    expect(failed.json()).toMatchObject({
      status: 'failed',
      attention: null,
      error: { code: 'FAILED_BY_OPERATOR', message: 'checked the CometAPI dashboard: nothing there' }
    })
    expect(await h.redis.exists(`{${h.prefix}}:task:${a}:parked`)).toBe(0)

    const resent = await resolve(h, b, { action: 'resend' })
    expect(resent.statusCode, resent.body).toBe(200)
    expect(resent.json()).toMatchObject({ status: 'queued', attention: null })
    const task = await waitFor(h, b, t => t.status !== 'queued', 5000)
    expect(task.status, JSON.stringify(task.attention)).toBe('submitted')
    expect(h.sim.acceptedFor(await externalId(h, b))).toBe(1)
    expect(h.sim.acceptedFor(await externalId(h, a))).toBe(0)
  })

  it('upstream refuses a second create as a duplicate external_task_id: held, not failed', async () => {
    const h = await harness()
    // The create was taken but its answer lost, and the look-up wrongly says "not found" past the grace.
    h.sim.inject({ on: 'create', kind: 'accept-then-hang' })
    h.sim.inject({ on: 'query', kind: 'not-found', times: 1000 })
    const { id } = await createTask(h)
    const task = await heldTask(h, id)
    expect(task.attention?.code).toBe('CREATE_UNCONFIRMED')
    expect(task.attention?.message).toContain('external_task_id already exists')
    expect(h.sim.counts.creates).toBe(2)
    expect(h.sim.acceptedFor(await externalId(h, id))).toBe(1)
  })

  it('a look-up that keeps failing (5xx) to the last attempt: held', async () => {
    const h = await harness()
    h.sim.inject({ on: 'create', kind: 'accept-then-reset' })
    h.sim.inject({ on: 'query', kind: 'http-error', status: 503, message: 'busy', times: 1000 })
    const task = await heldTask(h, (await createTask(h)).id)
    expect(task.attention?.message).toContain('UPSTREAM_HTTP_503')
    expect(h.sim.counts.creates).toBe(1)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(3)
  })

  it('without a look-up by external id, a callback naming the upstream task is confirmed by that id and adopted',
    async () => {
      const h = await harness({ UPSTREAM_TIMEOUT_MS: '1000' }, { auto: true, shapes: { externalLookup: false } },
        true)
      h.sim.inject({ on: 'create', kind: 'accept-then-hang' })
      const { id } = await createTask(h)
      const task = await waitFor(h, id, t => t.status === 'succeeded', 8000)
      expect(task.status, JSON.stringify(task.attention)).toBe('succeeded')
      expect(task.attention).toBeNull()
      expect(h.sim.counts.creates).toBe(1)
    })
})

describe('TASK_DEADLINE_MS and a create on the wire', () => {
  const DEADLINE = { TASK_DEADLINE_MS: '1000', RECONCILE_INTERVAL_MS: '100', RECONCILE_AFTER_MS: '0' }

  it('past the deadline while its create is unconfirmed: held (DEADLINE_UNCONFIRMED), not failed', async () => {
    const h = await harness({ ...DEADLINE, UPSTREAM_TIMEOUT_MS: '3000' }, { shapes: { externalLookup: false } })
    h.sim.inject({ on: 'create', kind: 'accept-then-hang' })
    const { id } = await createTask(h)
    const task = await heldTask(h, id)
    expect(task.attention?.code).toBe('DEADLINE_UNCONFIRMED')
    // Still held after the create timed out and its job ran again: neither failed nor sent again.
    await sleep(2500)
    const later = await getTask(h, id)
    expect(later).toMatchObject({ status: 'queued', error: null, attention: { code: 'DEADLINE_UNCONFIRMED' } })
    expect(h.sim.counts.creates).toBe(1)
  })

  it('a queued task that was never sent still fails at its deadline', async () => {
    const h = await harness({ ...DEADLINE, UPSTREAM_TIMEOUT_MS: '3000' })
    h.sim.inject({ on: 'create', kind: 'rate-limit', retryAfter: 30 })
    const task = await waitFor(h, (await createTask(h)).id, t => t.status !== 'queued', 5000)
    expect(task.error?.code).toBe('UPSTREAM_DEADLINE')
    expect(h.sim.counts.accepted).toBe(0)
  })

  it('upstream succeeds after the deadline failed the task: it becomes succeeded and the video is kept', async () => {
    const h = await harness(DEADLINE)
    const { id } = await createTask(h)
    const submitted = await waitFor(h, id, t => t.upstream !== null)
    const failed = await waitFor(h, id, t => t.status === 'failed', 5000)
    expect(failed.error?.code).toBe('UPSTREAM_DEADLINE')

    h.sim.setStatus(submitted.upstream?.task_id as string, 'succeed')
    const late = await waitFor(h, id, t => t.status === 'succeeded' && t.sequence >= 5, 5000)
    expect(late).toMatchObject({ status: 'succeeded', error: null, upstream: { status: 'succeed' } })
    expect(late.result?.videos).toHaveLength(1)
    const events = (await h.app.inject({ url: `/v1/videos/${id}/events`, headers: auth('alice') })).body
    expect([...events.matchAll(/^event: (.+)$/gm)].map(m => m[1])).toEqual([
      'video.queued', 'video.submitted', 'video.failed', 'video.succeeded', 'video.stored'
    ])
    const content = await h.app.inject({ url: `/v1/videos/${id}/content`, headers: auth('alice') })
    expect(content.statusCode).toBe(200)
    // The simulator's video for that upstream task, byte for byte (its MP4 with the task's trailer).
    expect(content.rawPayload.equals(Simulator.videoBytes(submitted.upstream?.task_id as string))).toBe(true)
  })

  it('a failure reported after the deadline changes nothing, and ends the watch', async () => {
    const h = await harness(DEADLINE)
    const { id } = await createTask(h)
    const submitted = await waitFor(h, id, t => t.upstream !== null)
    await waitFor(h, id, t => t.status === 'failed', 5000)
    h.sim.setStatus(submitted.upstream?.task_id as string, 'failed', 'content risk control')
    for (let i = 0; i < 100 && await h.redis.zscore(`{${h.prefix}}:open`, id) !== null; i++) await sleep(25)
    expect(await h.redis.zscore(`{${h.prefix}}:open`, id)).toBeNull()
    expect(await getTask(h, id)).toMatchObject({ status: 'failed', error: { code: 'UPSTREAM_DEADLINE' } })
  })
})
