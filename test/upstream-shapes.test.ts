/**
 * The shapes gateways of the new-api family answer in, besides Kling's own wire (docs/DESIGN.md, "Upstream: the
 * shapes of new-api gateways"): OpenAI-video-style create answers, their own alias ids, bare-number ids, seconds,
 * flat `{code: "<word>"}` errors and `task_not_exist`. First the adapter against the simulator speaking each shape,
 * then the real app end to end (the simulator over loopback HTTP, the run's real redis-server). Each end-to-end test
 * breaks without the handling it names.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest'
import { randomUUID } from 'node:crypto'
import { Simulator } from '../simulator/app.ts'
import { UpstreamError } from '../src/upstream/client.ts'
import { CometApiAdapter } from '../src/upstream/cometapi.ts'
import type { TaskView } from '../src/domain/task.ts'
import { KEYS, startHarness, type Harness } from './helpers/harness.ts'
import { callbackPath, createTask, waitFor } from './helpers/tasks.ts'

const MI = 'multi-image2video' as const
const body = (ext: string = randomUUID()) => ({
  image_list: [{ image: 'https://example.com/a.png' }, { image: 'https://example.com/b.png' }],
  prompt: 'two cats walk toward the camera',
  external_task_id: ext
})

async function failure (call: Promise<unknown>): Promise<UpstreamError> {
  try {
    await call
  } catch (err) {
    expect(err).toBeInstanceOf(UpstreamError)
    expect((err as Error).message).not.toContain(KEYS.comet)
    return err as UpstreamError
  }
  throw new Error('expected the call to fail')
}

describe('the CometAPI adapter reads every shape', () => {
  const sim = new Simulator({ apiKey: KEYS.comet, auto: false })
  let client: CometApiAdapter

  beforeAll(async () => {
    client = new CometApiAdapter({ baseUrl: await sim.listen(), apiKey: KEYS.comet, timeoutMs: 2000 })
  })
  afterAll(async () => {
    await client.close()
    await sim.close()
  })
  afterEach(() => { sim.reset() })

  it('an OpenAI-video-style create answer (no `code`) is a success: task_id, else id', async () => {
    sim.shapes.create = 'openai'
    const ext = randomUUID()
    const task = await client.create(MI, body(ext))
    const [made] = sim.tasks.values()
    expect(task).toMatchObject({ taskId: made.task_id, status: 'submitted', externalTaskId: ext })
    sim.shapes.aliasIds = true
    const aliased = await client.create(MI, body())
    expect(aliased.taskId).toMatch(/^task_[0-9a-f]{32}$/)
    // The alias finds the task, and the answer carries Kling's own id.
    const found = await client.query(MI, aliased.taskId)
    expect(found?.taskId).toMatch(/^\d{18,19}$/)
  })

  it('bare-number ids keep every digit; seconds become milliseconds', async () => {
    sim.shapes.numericIds = true
    sim.shapes.timestamps = 's'
    const before = Date.now()
    const task = await client.create(MI, body())
    const [made] = sim.tasks.values()
    expect(task.taskId).toBe(made.task_id)
    expect(task.createdAt).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000)
    expect(task.createdAt).toBeLessThanOrEqual(Date.now())
    const found = await client.query(MI, made.task_id)
    expect(found?.taskId).toBe(made.task_id)
    expect(found?.updatedAt).toBe(Math.floor(made.updated_at / 1000) * 1000)
  })

  it('new-api\'s `task_not_exist` (HTTP 400) is "no such task", not an error', async () => {
    sim.shapes.errors = 'new-api'
    expect(await client.query(MI, '861309198188019719')).toBeNull()
    expect(await client.query(MI, randomUUID())).toBeNull()
  })

  it('new-api\'s flat string codes are classified, their message kept', async () => {
    const flat = (status: number, code: string, message = `${code} happened`) =>
      sim.inject({ on: 'create', kind: 'new-api-error', status, code, message })
    flat(402, 'insufficient_user_quota', 'user quota is not enough')
    expect(await failure(client.create(MI, body()))).toMatchObject({
      code: 'COMET_insufficient_user_quota',
      message: 'user quota is not enough',
      retryable: false,
      maybeCreated: false,
      account: 'balance'
    })
    flat(403, 'pre_consume_token_quota_failed')
    expect(await failure(client.create(MI, body()))).toMatchObject({ account: 'balance', retryable: false })
    flat(400, 'invalid_request', 'prompt is too long')
    expect(await failure(client.create(MI, body()))).toMatchObject({
      code: 'COMET_invalid_request', message: 'prompt is too long', retryable: false, account: null
    })
    flat(503, 'model_not_found', 'no available channel for model kling-v1-6')
    expect(await failure(client.create(MI, body()))).toMatchObject({
      code: 'COMET_model_not_found', retryable: true, account: null
    })
    flat(500, 'do_request_failed')
    expect(await failure(client.create(MI, body()))).toMatchObject({ retryable: true, maybeCreated: true })
    flat(429, 'rate_limit_exceeded')
    expect(await failure(client.create(MI, body()))).toMatchObject({ code: 'UPSTREAM_RATE_LIMITED', retryable: true })
    sim.inject({ on: 'query', kind: 'new-api-error', status: 404, code: 'task_not_exist', message: 'task_not_exist' })
    expect(await client.query(MI, '1')).toBeNull()
  })

  it('account problems in CometAPI\'s own shape: 401 is the key, 403 insufficient_user_quota the balance', async () => {
    sim.account = 'key'
    expect(await failure(client.create(MI, body()))).toMatchObject({ code: 'UPSTREAM_HTTP_401', account: 'key' })
    expect(await failure(client.query(MI, '1'))).toMatchObject({ account: 'key', maybeCreated: false })
    sim.account = 'balance'
    expect(await failure(client.create(MI, body()))).toMatchObject({
      code: 'COMET_insufficient_user_quota', account: 'balance', retryable: false, maybeCreated: false
    })
    // An empty wallet does not stop queries.
    expect(await client.query(MI, '1')).toBeNull()
  })

  it('without a look-up by external id, asking by one is an error (404), never "not found"', async () => {
    sim.shapes.externalLookup = false
    const ext = randomUUID()
    const task = await client.create(MI, body(ext))
    expect(await failure(client.query(MI, ext))).toMatchObject({
      code: 'UPSTREAM_HTTP_404', retryable: false, maybeCreated: false
    })
    expect((await client.query(MI, task.taskId))?.externalTaskId).toBe(ext)
  })

  it('a 2xx with a `code` that is neither Kling\'s 0 nor a word is still unreadable: may have created', async () => {
    sim.inject({ on: 'create', kind: 'html' })
    expect(await failure(client.create(MI, body()))).toMatchObject({
      code: 'UPSTREAM_NOT_JSON', retryable: false, maybeCreated: true
    })
  })
})

/** Short timings; callbacks reach the app over real HTTP when it listens. */
const FAST = {
  UPSTREAM_TIMEOUT_MS: '500',
  UPSTREAM_RETRY_BASE_MS: '20',
  SUBMIT_UNCONFIRMED_GRACE_MS: '300',
  UPSTREAM_PAUSE_CHECK_MS: '200'
}

describe('the gateway end to end, against each shape', () => {
  const cleanups: Array<() => Promise<void>> = []
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
  })
  async function harness (opts: Parameters<typeof startHarness>[0] = {}): Promise<Harness> {
    const h = await startHarness({ ...opts, env: { ...FAST, ...opts.env } })
    cleanups.push(h.close)
    return h
  }
  /** Through to `succeeded` and `video.stored`, by callbacks alone (reconciliation is minutes away). */
  const done = async (h: Harness, id: string): Promise<TaskView> =>
    await waitFor(h, id, t => t.status === 'failed' || (t.status === 'succeeded' && t.sequence >= 5), 8000)

  it('an OpenAI-video create answer is the created task, not a failure', async () => {
    const h = await harness({ sim: { auto: false, shapes: { create: 'openai' } } })
    const task = await waitFor(h, (await createTask(h)).id, t => t.status !== 'queued')
    expect(task.status, JSON.stringify(task.error)).toBe('submitted')
    const [made] = h.sim.tasks.values()
    expect(task.upstream?.task_id).toBe(made.task_id)
    expect(h.sim.counts.creates).toBe(1)
  })

  it('a create answered with an alias id, callbacks with Kling\'s: confirmed by a query, and through to stored',
    async () => {
      const h = await harness({ listen: true, sim: { shapes: { create: 'openai', aliasIds: true } } })
      const { id } = await createTask(h)
      const task = await done(h, id)
      expect(task.status, JSON.stringify(task.error)).toBe('succeeded')
      const [made] = h.sim.tasks.values()
      // The query by the alias answered with Kling's id, which the task now shows.
      expect(task.upstream?.task_id).toBe(made.task_id)
      expect(h.sim.counts.callbackFailures).toBe(0)
      expect(h.sim.counts.accepted).toBe(1)
    })

  it('bare-number ids keep their digits in the create, the queries and the callbacks', async () => {
    const h = await harness({ listen: true, sim: { shapes: { numericIds: true } } })
    const { id } = await createTask(h)
    const task = await done(h, id)
    expect(task.status, JSON.stringify(task.error)).toBe('succeeded')
    const [made] = h.sim.tasks.values()
    expect(task.upstream?.task_id).toBe(made.task_id)
    expect(h.sim.counts.callbackFailures).toBe(0)
  })

  it('a callback whose bare-number id is the task\'s is applied at once (not rounded into another id)', async () => {
    const h = await harness({ sim: { auto: false } })
    const { id } = await createTask(h)
    const upstreamId = (await waitFor(h, id, t => t.upstream !== null)).upstream?.task_id as string
    // No external id in it: only the id says whose it is, so it must arrive with every digit.
    const payload = `{"task_id":${upstreamId},"task_status":"processing","task_status_msg":""}`
    const res = await h.app.inject({
      method: 'POST', url: callbackPath(h, id), payload, headers: { 'content-type': 'application/json' }
    })
    expect(res.statusCode, res.body).toBe(200)
    expect(res.json()).toEqual({ outcome: 'applied', status: 'processing' })
    const bad = await h.app.inject({
      method: 'POST', url: callbackPath(h, id), payload: '{"task_id":', headers: { 'content-type': 'application/json' }
    })
    expect(bad.statusCode).toBe(400)
    expect(bad.json().code).toBe('INVALID_JSON')
  })

  it('timestamps in seconds: the result\'s upstream_expires_at is 30 days after upstream finished', async () => {
    const h = await harness({ listen: true, sim: { shapes: { timestamps: 's' } } })
    const { id } = await createTask(h)
    const task = await done(h, id)
    expect(task.status, JSON.stringify(task.error)).toBe('succeeded')
    const [made] = h.sim.tasks.values()
    const finished = Math.floor(made.updated_at / 1000) * 1000
    expect(task.result?.videos[0].upstream_expires_at).toBe(new Date(finished + 30 * 24 * 3600_000).toISOString())
  })

  it('new-api\'s task_not_exist after a create that made nothing: not found, so it is sent again', async () => {
    const h = await harness({ sim: { auto: false, shapes: { errors: 'new-api' } } })
    // A reset may or may not have made a task; this one made none, and the look-up says so in new-api's words.
    h.sim.inject({ on: 'create', kind: 'reset' })
    const task = await waitFor(h, (await createTask(h)).id, t => t.status !== 'queued', 5000)
    expect(task.status, JSON.stringify(task.error ?? task.attention)).toBe('submitted')
    expect(task.attention).toBeNull()
    expect(h.sim.counts.creates).toBe(2)
    expect(h.sim.counts.accepted).toBe(1)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(1)
  })

  it('new-api\'s flat refusal fails the task with its code and message', async () => {
    const h = await harness({ sim: { auto: false } })
    const code = 'sensitive_words_detected'
    h.sim.inject({ on: 'create', kind: 'new-api-error', status: 400, code, message: 'blocked' })
    const task = await waitFor(h, (await createTask(h)).id, t => t.status !== 'queued', 5000)
    expect(task.status).toBe('failed')
    expect(task.error).toEqual({ code: 'COMET_sensitive_words_detected', message: 'blocked' })
  })

  it('new-api\'s retryable flat refusal (do_request_failed) is retried, looked up first, and made once', async () => {
    const h = await harness({ sim: { auto: false } })
    h.sim.inject({ on: 'create', kind: 'new-api-error', status: 502, code: 'do_request_failed', message: 'eof' })
    const task = await waitFor(h, (await createTask(h)).id, t => t.status !== 'queued', 5000)
    expect(task.status, JSON.stringify(task.error)).toBe('submitted')
    expect(h.sim.counts.accepted).toBe(1)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(1)
  })
})
