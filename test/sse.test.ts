import { describe, it, expect, afterAll, beforeAll } from 'vitest'
import { randomBytes } from 'node:crypto'
import { Simulator } from '../simulator/app.ts'
import { auth, KEYS, startHarness, type Harness } from './helpers/harness.ts'
import { callbackPath, createTask, waitFor } from './helpers/tasks.ts'
import { readSse } from './helpers/sse.ts'

describe('GET /v1/videos/:id/events (SSE)', () => {
  let sim: Simulator
  let a: Harness
  let b: Harness
  beforeAll(async () => {
    sim = new Simulator({ apiKey: KEYS.comet, auto: false })
    await sim.listen()
    const env = {
      REDIS_PREFIX: `sse${randomBytes(4).toString('hex')}`, SSE_HEARTBEAT_MS: '200', RECONCILE_INTERVAL_MS: '600000'
    }
    a = await startHarness({ simulator: sim, env, listen: true })
    b = await startHarness({ simulator: sim, env, workers: false })
  })
  afterAll(async () => {
    await a.close()
    await b.close()
    await sim.close()
  })

  it('resumes after a disconnect with Last-Event-ID, with no gap or duplicate, across replicas', async () => {
    const task = await createTask(a)
    const submitted = await waitFor(a, task.id, t => t.status === 'submitted')
    const upstreamId = submitted.upstream?.task_id as string
    const url = `${a.config.publicBaseUrl}/v1/videos/${task.id}/events`

    const first = await readSse(url, auth('alice'), { until: f => f.length >= 2 })
    const seqOf = (f: { data: string }) => (JSON.parse(f.data) as { sequence: number }).sequence
    expect(first.frames.map(f => [seqOf(f), f.event])).toEqual([[1, 'video.queued'], [2, 'video.submitted']])
    // `id:` is the event's own id (also its webhook-id), never the bare sequence.
    for (const f of first.frames) expect(f.id).toBe((JSON.parse(f.data) as { id: string }).id)
    expect(first.frames[0].id).toMatch(/^evt_[A-Za-z0-9_-]{22}$/)
    expect(JSON.parse(first.frames[1].data))
      .toMatchObject({ type: 'video.submitted', task_id: task.id, sequence: 2, data: { status: 'submitted' } })

    // While the client is away, replica B takes a callback.
    const cb = await b.app.inject({
      method: 'POST', url: callbackPath(b, task.id), payload: { task_id: upstreamId, task_status: 'processing' }
    })
    expect(cb.json().outcome).toBe('applied')

    // Reconnect to replica A; B finishes the task while the stream is open.
    const resumed = readSse(
      url,
      { ...auth('alice'), 'last-event-id': first.frames[1].id as string },
      { timeoutMs: 8000 }
    )
    await new Promise(resolve => setTimeout(resolve, 300))
    sim.setStatus(upstreamId, 'succeed')
    await b.app.inject({
      method: 'POST', url: callbackPath(b, task.id), payload: { task_id: upstreamId, task_status: 'succeed' }
    })
    await b.app.deps.reconcile.checkTask(task.id)
    const second = await resumed
    // The stream does not end at the terminal state: the copy's `video.stored` is the last event it will have.
    expect(second.frames.map(f => [seqOf(f), f.event]))
      .toEqual([[3, 'video.processing'], [4, 'video.succeeded'], [5, 'video.stored']])
    expect(second.ended).toBe(true)
    // A reconnect after the last event: 204, which tells an EventSource to stop reconnecting.
    const after = await readSse(url, { ...auth('alice'), 'last-event-id': second.frames[2].id as string })
    expect(after.status).toBe(204)
    expect(after.frames).toEqual([])
  })

  it('replays a finished task from ?last_event_id and ends; another caller gets 404', async () => {
    const task = await createTask(a)
    const t = await waitFor(a, task.id, x => x.status === 'submitted')
    sim.setStatus(t.upstream?.task_id as string, 'failed', 'content risk')
    await a.app.deps.reconcile.checkTask(task.id)
    const base = `${a.config.publicBaseUrl}/v1/videos/${task.id}/events`
    const all = await readSse(base, auth('alice'))
    expect(all.frames.map(f => f.event)).toEqual(['video.queued', 'video.submitted', 'video.failed'])
    expect(all.ended).toBe(true)
    // A bare number is a sequence (clients written before event ids); an event id resumes after that event.
    const tail = await readSse(`${base}?last_event_id=2`, auth('alice'))
    expect(tail.frames.map(f => f.id)).toEqual([all.frames[2].id])
    const afterId = await readSse(base, { ...auth('alice'), 'last-event-id': all.frames[1].id as string })
    expect(afterId.frames.map(f => f.id)).toEqual([all.frames[2].id])
    // An id the log no longer holds (rolled back with Redis): the whole log again, each event with its own id.
    const unknown = await readSse(base, { ...auth('alice'), 'last-event-id': 'evt_rolled_back_00000000' })
    expect(unknown.frames.map(f => f.id)).toEqual(all.frames.map(f => f.id))
    const nothing = await readSse(`${base}?last_event_id=3`, auth('alice'))
    expect(nothing.status).toBe(204)
    expect(nothing.frames).toEqual([])
    // A failed task has no copy to wait for: its terminal event is its last, and a fresh stream ends there.
    expect(all.ended).toBe(true)
    expect((await readSse(base, auth('bob'))).status).toBe(404)
  })

  it('sends heartbeats on an idle stream and ends open streams on shutdown', async () => {
    const h = await startHarness({
      listen: true, sim: { auto: false }, env: { SSE_HEARTBEAT_MS: '100' }, workers: false
    })
    const task = await createTask(h)
    const res = await fetch(`${h.config.publicBaseUrl}/v1/videos/${task.id}/events`, { headers: auth('alice') })
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader()
    let text = ''
    while (!text.includes(': ping')) text += (await reader.read()).value ?? ''
    expect(text).toMatch(/id: evt_[A-Za-z0-9_-]+\nevent: video.queued/)
    const started = Date.now()
    await h.close()
    expect(Date.now() - started).toBeLessThan(3000)
    let rest = ''
    for (;;) { const { value, done } = await reader.read(); if (done) break; rest += value }
    expect(rest).toContain(': server closing')
  })
})
