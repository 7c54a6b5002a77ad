import { describe, it, expect } from 'vitest'
import { keys } from '../src/store/keys.ts'
import { type Harness, harnessPerTest } from './helpers/harness.ts'
import { callbackPath, createTask, getTask, waitFor } from './helpers/tasks.ts'

const harness = harnessPerTest()

/** A submitted task whose upstream twin the test moves by hand. */
async function submitted (h: Harness) {
  const task = await createTask(h)
  const t = await waitFor(h, task.id, x => x.status === 'submitted')
  expect(t.status).toBe('submitted')
  const upstreamId = t.upstream?.task_id as string
  return { id: task.id, upstreamId, sim: h.sim.tasks.get(upstreamId)! }
}

const body = (taskId: string, status: string, extra: Record<string, unknown> = {}) => ({
  task_id: taskId, task_status: status, task_status_msg: '', created_at: Date.now(), updated_at: Date.now(), ...extra
})

describe('POST /callbacks/kling', () => {
  it('drives a task to succeeded end to end over real HTTP, the terminal state confirmed by a query', async () => {
    const h = await harness({
      listen: true, sim: { processingAfterMs: 50, finishAfterMs: 150 }, env: { RECONCILE_INTERVAL_MS: '60000' }
    })
    const task = await createTask(h)
    const done = await waitFor(h, task.id, t => t.status === 'succeeded')
    expect(done.status).toBe('succeeded')
    expect(done.result?.videos[0].upstream_url).toMatch(/\/_sim\/videos\/\d+\.mp4$/)
    expect(done.result?.videos[0].upstream_expires_at).not.toBeNull()
    expect(h.sim.counts.callbacks).toBeGreaterThanOrEqual(2)
    expect(h.sim.counts.callbackFailures).toBe(0)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(1)
    const events = await h.app.deps.store.events(task.id)
    // The result mirror may already have added `video.stored` (sequence 5) after the state changes.
    expect(events.map(e => [e.sequence, e.type]).slice(0, 4))
      .toEqual([[1, 'video.queued'], [2, 'video.submitted'], [3, 'video.processing'], [4, 'video.succeeded']])
    expect(events.slice(4).map(e => e.type).every(t => t === 'video.stored')).toBe(true)
    // Tokens reach the request log only redacted.
    expect(h.logs.text).toContain('/callbacks/kling?token=[REDACTED]')
  })

  it('answers 429 with Retry-After past 120 callbacks for one task in a minute, and only for that task', async () => {
    let offset = 0
    const h = await harness({ sim: { auto: false }, clock: () => Date.now() + offset })
    const a = await submitted(h)
    const b = await submitted(h)
    const send = async (t: { id: string, upstreamId: string }) =>
      await h.app.inject({ method: 'POST', url: callbackPath(h, t.id), payload: body(t.upstreamId, 'processing') })
    for (let i = 0; i < 120; i++) expect((await send(a)).statusCode).toBe(200)
    const over = await send(a)
    expect(over.statusCode).toBe(429)
    expect(over.headers['retry-after']).toBe('60')
    expect(over.json().code).toBe('TOO_MANY_CALLBACKS')
    expect((await send(b)).statusCode).toBe(200)
    // The window is a minute from the task's first callback: after it, the task is answered again.
    offset = 61_000
    expect((await send(a)).json().outcome).toBe('duplicate')
  })

  it('answers 404 for a missing, wrong or truncated token and changes nothing', async () => {
    const h = await harness({ sim: { auto: false } })
    const { id, upstreamId } = await submitted(h)
    const good = callbackPath(h, id)
    const wrongOwner = good.replace(id, id.replace(/.$/, c => c === 'a' ? 'b' : 'a'))
    const urls = [
      '/callbacks/kling', '/callbacks/kling?token=', `/callbacks/kling?token=${id}.AAAA`, good.slice(0, -3), wrongOwner
    ]
    for (const url of urls) {
      const res = await h.app.inject({ method: 'POST', url, payload: body(upstreamId, 'processing') })
      expect(res.statusCode, url).toBe(404)
      expect(res.json().detail).toBe('callback target not found')
    }
    const task = await getTask(h, id)
    expect(task.status).toBe('submitted')
    expect(task.sequence).toBe(2)
  })

  it('answers 400 when the body is not a Kling task or not this task', async () => {
    const h = await harness({ sim: { auto: false } })
    const { id, upstreamId } = await submitted(h)
    const url = callbackPath(h, id)
    expect((await h.app.inject({ method: 'POST', url, payload: { hello: 'world' } })).statusCode).toBe(400)
    const otherId = await h.app.inject({ method: 'POST', url, payload: body('999999999999999999', 'processing') })
    expect(otherId.statusCode).toBe(400)
    expect(otherId.json().errors[0].pointer).toBe('/task_id')
    const otherExt = await h.app.inject({
      method: 'POST', url, payload: body(upstreamId, 'processing', { task_info: { external_task_id: 'not-ours' } })
    })
    expect(otherExt.statusCode).toBe(400)
    expect(otherExt.json().errors[0].pointer).toBe('/task_info/external_task_id')
    const big = await h.app.inject({
      method: 'POST', url, payload: { ...body(upstreamId, 'processing'), pad: 'x'.repeat(70_000) }
    })
    expect(big.statusCode).toBe(413)
    expect((await getTask(h, id)).sequence).toBe(2)
  })

  it('applies a non-terminal callback at once, and a duplicate or backward one changes nothing', async () => {
    const h = await harness({ sim: { auto: false } })
    const { id, upstreamId } = await submitted(h)
    const url = callbackPath(h, id)
    const first = await h.app.inject({ method: 'POST', url, payload: body(upstreamId, 'processing') })
    expect(first.json()).toEqual({ outcome: 'applied', status: 'processing' })
    const again = await h.app.inject({ method: 'POST', url, payload: body(upstreamId, 'processing') })
    expect(again.statusCode).toBe(200)
    expect(again.json()).toEqual({ outcome: 'duplicate', status: 'processing' })
    const back = await h.app.inject({ method: 'POST', url, payload: { id: upstreamId, status: 'submitted' } })
    expect(back.json().outcome).toBe('duplicate')
    expect((await getTask(h, id)).sequence).toBe(3)
  })

  it('does not apply a forged terminal callback while the query says otherwise', async () => {
    const h = await harness({ sim: { auto: false } })
    const { id, upstreamId } = await submitted(h)
    h.sim.setStatus(upstreamId, 'processing')
    const queries = h.sim.counts.queries
    const res = await h.app.inject({
      method: 'POST',
      url: callbackPath(h, id),
      payload: body(upstreamId, 'succeed', { task_result: { videos: [{ id: 'x', url: 'https://evil.example/v.mp4', duration: '5' }] } })
    })
    expect(res.statusCode).toBe(202)
    expect(res.json().outcome).toBe('confirming')
    for (let i = 0; i < 200 && h.sim.counts.queries === queries; i++) {
      await new Promise(resolve => setTimeout(resolve, 10))
    }
    const task = await waitFor(h, id, t => t.status === 'processing')
    expect(task.status).toBe('processing')
    expect(task.result).toBeNull()
    // Once upstream really finishes, the same kind of callback is confirmed and applied.
    h.sim.setStatus(upstreamId, 'succeed')
    await h.app.inject({ method: 'POST', url: callbackPath(h, id), payload: body(upstreamId, 'succeed') })
    const done = await waitFor(h, id, t => t.status === 'succeeded')
    expect(done.result?.videos[0].upstream_url).toContain('/_sim/videos/')
  })
})

describe('reconciliation', () => {
  it('finishes a task whose callbacks all vanish', async () => {
    const h = await harness({
      listen: true,
      sim: { processingAfterMs: 30, finishAfterMs: 80 },
      env: { RECONCILE_INTERVAL_MS: '100', RECONCILE_AFTER_MS: '50' }
    })
    h.sim.callbackPolicy.drop = true
    const task = await createTask(h)
    const done = await waitFor(h, task.id, t => t.status === 'succeeded', 8000)
    expect(done.status).toBe('succeeded')
    expect(h.sim.counts.callbacks).toBe(0)
  })

  it('treats a poll timeout and "not found" as unknown, never failed', async () => {
    const h = await harness({
      sim: { auto: false }, env: { UPSTREAM_TIMEOUT_MS: '200', RECONCILE_INTERVAL_MS: '60000' }
    })
    const { id } = await submitted(h)
    h.sim.inject({ on: 'query', kind: 'hang' })
    expect(await h.app.deps.reconcile.checkTask(id)).toBe('unknown')
    h.sim.inject({ on: 'query', kind: 'not-found' })
    expect(await h.app.deps.reconcile.checkTask(id)).toBe('unknown')
    expect((await getTask(h, id)).status).toBe('submitted')
  })

  it('fails a task past TASK_DEADLINE_MS with UPSTREAM_DEADLINE', async () => {
    const h = await harness({
      sim: { auto: false }, env: { TASK_DEADLINE_MS: '1000', RECONCILE_INTERVAL_MS: '100', RECONCILE_AFTER_MS: '0' }
    })
    const { id } = await submitted(h)
    const task = await waitFor(h, id, t => t.status === 'failed', 8000)
    expect(task.error).toEqual({ code: 'UPSTREAM_DEADLINE', message: 'not finished within 1000 ms' })
  })

  it('re-queues a queued task whose submit job was lost', async () => {
    const h = await harness({ sim: { auto: false }, env: { RECONCILE_INTERVAL_MS: '60000' } })
    const task = await createTask(h)
    await waitFor(h, task.id, t => t.status === 'submitted')
    // Simulate a crash between storing a task and queueing its job: a queued task with no job.
    const lost = await h.app.deps.store.create({
      id: 'lost-task-0001',
      caller: 'alice',
      createdAt: Date.now(),
      reference: null,
      metadata: null,
      request: (await getTask(h, task.id)).request,
      externalTaskId: 'ext-lost-0001',
      webhookUrl: null
    })
    expect(lost.outcome).toBe('created')
    expect(await h.app.deps.reconcile.checkTask('lost-task-0001')).toBe('requeued')
    const done = await waitFor(h, 'lost-task-0001', t => t.status === 'submitted')
    expect(done.status).toBe('submitted')
    expect(h.sim.acceptedFor('ext-lost-0001')).toBe(1)
  })

  it('spreads a sweep of many quiet tasks instead of querying them at once', async () => {
    const h = await harness({
      sim: { auto: false },
      workers: false,
      env: { RECONCILE_INTERVAL_MS: '60000', RECONCILE_AFTER_MS: '0', RECONCILE_BATCH: '50' }
    })
    for (let i = 0; i < 60; i++) await h.redis.zadd(keys(h.prefix).open, 1, `quiet-${i}`)
    expect(await h.app.deps.reconcile.sweep()).toBe(50)
    const { Queue } = await import('bullmq')
    const q = new Queue('reconcile', { connection: h.redis as never, prefix: keys(h.prefix).bullPrefix })
    const delayed = await q.getDelayed(0, 100)
    const delays = delayed.map(j => j.opts.delay ?? 0)
    expect(delayed.length + (await q.getWaitingCount())).toBe(50)
    expect(Math.max(...delays) - Math.min(...delays)).toBeGreaterThan(10_000)
    await q.obliterate({ force: true })
    await q.close()
  })
})
