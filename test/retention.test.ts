/**
 * Task retention (docs/API.md, "Retention"): a finished task is removed TASK_RETENTION_DAYS after it ended, with
 * every key and index entry of its own, its deliveries and their attempts, its reference and Idempotency-Key records
 * and its stored videos; unfinished and held tasks stay; counts and listings agree afterwards; a sweep is bounded
 * and safe on two replicas at once. The real app, the run's redis-server, the simulator over loopback HTTP. Time
 * moves by the app's injected clock (tasks "end" now and are judged days later), never by a test-only variable.
 */
import { describe, it, expect, afterEach } from 'vitest'
import type { TaskView } from '../src/domain/task.ts'
import { videoKey } from '../src/jobs/copy.ts'
import { keys } from '../src/store/keys.ts'
import { auth, harnessPerTest, type Harness } from './helpers/harness.ts'
import { Receiver } from './helpers/receiver.ts'
import { createTask, getTask, validBody, waitFor } from './helpers/tasks.ts'

const DAY = 24 * 3600_000
const startHarness = harnessPerTest()
const receivers: Receiver[] = []
afterEach(async () => { for (const r of receivers.splice(0)) await r.close() })

/** A clock the test moves forward; every harness of a test shares it, as replicas share time. */
function movableClock () {
  const state = { offset: 0, now: () => Date.now() + state.offset }
  return state
}

/**
 * Everything in the prefix that still names `id`: a key with it in its name, a set or sorted-set member, a
 * string or hash value equal to it (a reference or an Idempotency-Key record). The event stream is left to its own
 * trim (MAXLEN), as documented.
 */
async function traces (h: Harness, id: string): Promise<string[]> {
  const found: string[] = []
  const k = keys(h.prefix)
  for (const key of await h.redis.keys(`${k.prefix}*`)) {
    if (key.includes(id)) { found.push(key); continue }
    const type = await h.redis.type(key)
    if (type === 'zset' && await h.redis.zscore(key, id) !== null) found.push(`${key} (member)`)
    if (type === 'set' && await h.redis.sismember(key, id) === 1) found.push(`${key} (member)`)
    if (type === 'string' && await h.redis.get(key) === id) found.push(`${key} (value)`)
    if (type === 'hash' && Object.values(await h.redis.hgetall(key)).includes(id)) found.push(`${key} (value)`)
  }
  return found
}

async function create (h: Harness, over: Record<string, unknown> = {}, key?: string) {
  const headers = { ...auth('alice'), ...(key === undefined ? {} : { 'idempotency-key': key }) }
  return await h.app.inject({ method: 'POST', url: '/v1/videos', headers, payload: validBody(over) })
}

/** Moves a submitted task to `status` upstream; the callback (confirmed by a query) ends it here. */
async function finish (h: Harness, id: string, status: 'succeed' | 'failed'): Promise<TaskView> {
  const sent = await waitFor(h, id, t => t.upstream?.task_id !== undefined)
  h.sim.setStatus(sent.upstream?.task_id as string, status)
  return await waitFor(h, id, t => t.status === (status === 'succeed' ? 'succeeded' : 'failed'))
}

const listed = async (h: Harness): Promise<string[]> =>
  (await h.app.inject({ url: '/v1/videos?limit=100', headers: auth('ops') })).json<{ data: TaskView[] }>()
    .data.map(t => t.id)

describe('task retention', () => {
  it('removes a finished task with all it owns; unfinished and held tasks stay, counts agree', async () => {
    const clock = movableClock()
    const receiver = await Receiver.start()
    receivers.push(receiver)
    const h = await startHarness({
      listen: true,
      clock: clock.now,
      sim: { auto: false, shapes: { externalLookup: false } },
      env: {
        TASK_RETENTION_DAYS: '1',
        UPSTREAM_TIMEOUT_MS: '300',
        UPSTREAM_RETRY_BASE_MS: '20',
        SUBMIT_UNCONFIRMED_GRACE_MS: '200',
        UPSTREAM_SUBMIT_ATTEMPTS: '3',
        WEBHOOK_RETRY_SCHEDULE: '0'
      }
    })
    const ep = await h.app.inject({
      method: 'POST', url: '/v1/webhook-endpoints', headers: auth('alice'), payload: { url: receiver.url() }
    })
    expect(ep.statusCode, ep.body).toBe(201)

    // Held: its create hung and nothing can say whether upstream made it.
    h.sim.inject({ on: 'create', kind: 'hang' })
    const held = await createTask(h)
    expect((await waitFor(h, held.id, t => t.attention !== null)).attention).not.toBeNull()

    const first = await create(h, { reference: 'ret-a', webhook_url: receiver.url('/own') }, 'ret-key-a')
    expect(first.statusCode, first.body).toBe(202)
    const a = first.json<TaskView>()
    const b = await createTask(h)
    const open = await createTask(h)
    expect((await finish(h, a.id, 'succeed')).status).toBe('succeeded')
    expect((await finish(h, b.id, 'failed')).status).toBe('failed')
    // a's result is copied (its last event), and its webhooks reached the endpoint and its own URL.
    const settled = async () => (await h.app.deps.store.events(a.id)).some(e => e.type === 'video.stored')
    for (let i = 0; i < 200 && !await settled(); i++) await new Promise(resolve => setTimeout(resolve, 25))
    expect(await settled()).toBe(true)
    expect(await h.blobs.stat(videoKey(a.id, 0))).not.toBeNull()
    await receiver.waitFor(1, { path: '/own' })
    const mine = async () => (await h.app.inject({ url: '/v1/deliveries?limit=100', headers: auth('ops') }))
      .json<{ data: Array<{ task_id: string }> }>().data.filter(d => d.task_id === a.id)
    expect((await mine()).length).toBeGreaterThanOrEqual(2)
    expect(await h.redis.zscore(keys(h.prefix).ended, a.id)).not.toBeNull()

    // Not yet: they ended moments ago.
    expect(await h.app.deps.retention.sweep()).toEqual({ removed: 0, kept: 0 })
    clock.offset = 2 * DAY
    expect(await h.app.deps.retention.sweep()).toEqual({ removed: 2, kept: 0 })

    for (const id of [a.id, b.id]) {
      expect((await h.app.inject({ url: `/v1/videos/${id}`, headers: auth('ops') })).statusCode).toBe(404)
      expect(await traces(h, id), id).toEqual([])
    }
    expect(await h.blobs.stat(videoKey(a.id, 0))).toBeNull()
    expect(await mine()).toEqual([])
    expect((await getTask(h, open.id)).status).toBe('submitted')
    expect((await getTask(h, held.id)).attention).not.toBeNull()
    expect((await listed(h)).sort()).toEqual([held.id, open.id].sort())
    expect(await h.app.deps.store.countByStatus())
      .toEqual({ queued: 1, submitted: 1, processing: 0, succeeded: 0, failed: 0, canceled: 0 })
    expect(await h.app.deps.store.countNeedingAttention()).toBe(1)
    expect(await h.app.deps.store.parkedBytes()).toBe(0)

    // The key and the reference were the removed task's: the same request now makes a new task.
    const again = await create(h, { reference: 'ret-a', webhook_url: receiver.url('/own') }, 'ret-key-a')
    expect(again.statusCode, again.body).toBe(202)
    expect(again.headers['idempotent-replayed']).toBeUndefined()
    expect(again.json<TaskView>().id).not.toBe(a.id)
  })

  it('is bounded per sweep, and two replicas sweeping at once remove each task once', async () => {
    const clock = movableClock()
    const env = { TASK_RETENTION_DAYS: '1' }
    const sim = { processingAfterMs: 10, finishAfterMs: 30, outcome: 'failed' as const }
    const h = await startHarness({ listen: true, clock: clock.now, keepKeys: true, sim, env })
    const ids: string[] = []
    for (let i = 0; i < 7; i++) ids.push((await createTask(h)).id)
    for (const id of ids) expect((await waitFor(h, id, t => t.status === 'failed')).status).toBe('failed')
    clock.offset = 2 * DAY

    expect(await h.app.deps.retention.sweep(3)).toEqual({ removed: 3, kept: 0 })
    expect((await h.app.deps.store.countByStatus()).failed).toBe(4)

    const other = await startHarness({ workers: false, clock: clock.now, env: { ...env, REDIS_PREFIX: h.prefix } })
    const [one, two] = await Promise.all([h.app.deps.retention.sweep(), other.app.deps.retention.sweep()])
    // A task the other replica took first counts as gone for both; none is left, none is half removed.
    expect(one.removed + two.removed).toBeGreaterThanOrEqual(4)
    expect(one.kept + two.kept).toBe(0)
    expect(await h.app.deps.store.countByStatus()).toMatchObject({ failed: 0, queued: 0, submitted: 0 })
    expect(await listed(h)).toEqual([])
    expect(await h.redis.zcard(keys(h.prefix).ended)).toBe(0)
    for (const id of ids) expect(await traces(h, id), id).toEqual([])
  })
})
