/**
 * Keep the result until it is safe (docs/DESIGN.md, "Where the bytes go"): the copy of a finished video is retried
 * until its `upstream_expires_at` (not for a few minutes); a periodic sweep queues again every succeeded task whose
 * result is not stored yet (a lost copy job, a job an older version left failed, a task from before the sweep); and
 * once the URL has expired the task says so plainly: `copy_error` on the video, `video.copy_failed` as its last
 * event (SSE ends, a reconnect gets 204), content 410 UPSTREAM_URL_EXPIRED. The simulator's result URLs expire
 * (`x-expires`, 403 past it). Real app, redis-server, simulator over loopback HTTP; clocks injected where time matters.
 */
import { describe, it, expect, afterEach } from 'vitest'
import type { FastifyRequest } from 'fastify'
import { Queue } from 'bullmq'
import { copyRetryDelay, EXPIRY_MARGIN_MS } from '../src/jobs/copy.ts'
import { urlExpiresAt } from '../src/domain/upstream-state.ts'
import type { TaskEvent, TaskView } from '../src/domain/task.ts'
import { keys } from '../src/store/keys.ts'
import { Simulator, type SimOptions } from '../simulator/app.ts'
import { auth, KEYS, startHarness, type Harness, type HarnessOptions } from './helpers/harness.ts'
import { readSse } from './helpers/sse.ts'
import { createTask, waitFor } from './helpers/tasks.ts'

const DAY = 24 * 3600_000
const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

/** Polls `check` every 20 ms until it holds, at most `ms`; returns whether it did. */
async function until (check: () => boolean | Promise<boolean>, ms = 10_000): Promise<boolean> {
  for (let waited = 0; waited < ms; waited += 20) {
    if (await check()) return true
    await sleep(20)
  }
  return await check()
}

/**
 * The simulator's video downloads, counted, and answered `status` instead while `failing()` says so (a flaky or
 * refusing CDN); added as a hook before it listens, the simulator itself unchanged.
 */
class Downloads {
  seen = 0
  failing: (url: string) => boolean = () => false
  status = 500

  /** Whether to answer `status` instead of the video. */
  refuse (request: FastifyRequest): boolean {
    if (!request.url.startsWith('/_sim/videos/')) return false
    this.seen++
    return this.failing(request.url)
  }
}

async function simulator (opts: SimOptions, downloads: Downloads): Promise<Simulator> {
  const sim = new Simulator({ apiKey: KEYS.comet, processingAfterMs: 20, finishAfterMs: 60, ...opts })
  sim.app.addHook('onRequest', async (request, reply) => {
    if (downloads.refuse(request)) return await reply.code(downloads.status).send('upstream trouble')
  })
  await sim.listen()
  return sim
}

const FAST = { MIRROR_RETRY_BASE_MS: '10', MIRROR_RETRY_MAX_MS: '40' }
const events = async (h: Harness, id: string): Promise<TaskEvent[]> => await h.app.deps.store.events(id)
const types = async (h: Harness, id: string): Promise<string[]> => (await events(h, id)).map(e => e.type)
const inCopying = async (h: Harness, id: string) => await h.redis.zscore(keys(h.prefix).copying, id) !== null
const content = async (h: Harness, id: string) =>
  await h.app.inject({ url: `/v1/videos/${id}/content`, headers: auth('alice') })

describe('the result copy', () => {
  const open: Array<{ close: () => Promise<void> }> = []
  afterEach(async () => { for (const x of open.splice(0).reverse()) await x.close() })
  async function harness (downloads: Downloads, opts: HarnessOptions & { simOpts?: SimOptions } = {}):
  Promise<Harness> {
    const sim = await simulator(opts.simOpts ?? {}, downloads)
    open.push(sim)
    // Listening, so the simulator's callbacks finish the tasks at once.
    const h = await startHarness({ listen: true, ...opts, simulator: sim, env: { ...FAST, ...opts.env } })
    open.push(h)
    return h
  }

  it('is retried past the old eight attempts until it has the video', async () => {
    const downloads = new Downloads()
    downloads.failing = () => downloads.seen <= 12
    const h = await harness(downloads)
    const task = await createTask(h)
    const done = await waitFor(h, task.id, t => t.status === 'succeeded')
    expect(done.status).toBe('succeeded')
    expect(await until(async () => (await types(h, task.id)).includes('video.stored'))).toBe(true)
    expect(downloads.seen).toBe(13)
    const res = await content(h, task.id)
    expect(res.statusCode).toBe(200)
    expect(res.rawPayload.equals(Simulator.videoBytes(done.upstream?.task_id as string))).toBe(true)
    expect(await inCopying(h, task.id)).toBe(false)
  })

  it('takes a 403 well before upstream_expires_at for a hiccup, not the end', async () => {
    const downloads = new Downloads()
    downloads.status = 403
    downloads.failing = () => downloads.seen <= 3
    const h = await harness(downloads)
    const task = await createTask(h)
    expect(await until(async () => (await types(h, task.id)).includes('video.stored'))).toBe(true)
    expect(await types(h, task.id)).not.toContain('video.copy_failed')
    expect(downloads.seen).toBe(4)
  })

  it('gives up once the simulator\'s expiring URL answers 403 past its x-expires, and the task says so', async () => {
    const downloads = new Downloads()
    // The URL works for 1-2 s after the task ends; every download fails until then, as a CDN in trouble would.
    downloads.failing = url => Date.now() < (urlExpiresAt(`http://sim${url}`) ?? 0)
    const h = await harness(downloads, { simOpts: { videoUrlTtlMs: 2000 } })
    const task = await createTask(h)
    const done = await waitFor(h, task.id, t => t.status === 'succeeded')
    const video = done.result?.videos[0]
    // The gateway reads the URL's own expiry: sooner than Kling's 30 days.
    const signed = urlExpiresAt(video?.upstream_url ?? '')
    expect(signed).not.toBeNull()
    expect(new URL(video?.upstream_url ?? '').searchParams.get('x-signature')).toMatch(/^[0-9a-f]{32}$/)
    expect(video?.upstream_expires_at).toBe(new Date(signed as number).toISOString())

    expect(await until(async () => (await types(h, task.id)).includes('video.copy_failed'), 15_000)).toBe(true)
    const all = await events(h, task.id)
    expect(all.map(e => e.type)).toEqual(['video.queued', 'video.submitted', 'video.processing', 'video.succeeded',
      'video.copy_failed'])
    const last = all.at(-1) as TaskEvent
    expect(last.data.status).toBe('succeeded')
    const error = last.data.result?.videos[0].copy_error
    expect(error?.code).toBe('UPSTREAM_URL_EXPIRED')
    const said = new RegExp('^the upstream URL expired \\(at .+Z\\) before the video could be copied; ' +
      'the last attempt: download answered 403$')
    expect(error?.message).toMatch(said)
    expect(error?.message).not.toContain('x-signature')
    // The simulator refused it itself, after several failed attempts before the expiry.
    expect(downloads.seen).toBeGreaterThan(2)

    // The task, its content, its events.
    const view = (await h.app.inject({ url: `/v1/videos/${task.id}`, headers: auth('alice') })).json<TaskView>()
    expect(view.result?.videos[0].copy_error).toEqual(error)
    const gone = await content(h, task.id)
    expect(gone.statusCode).toBe(410)
    expect(gone.headers['content-type']).toMatch(/^application\/problem\+json/)
    expect(gone.json()).toMatchObject({ code: 'UPSTREAM_URL_EXPIRED', detail: error?.message })
    const base = h.config.publicBaseUrl as string
    const sse = await readSse(`${base}/v1/videos/${task.id}/events`, auth('alice'))
    expect(sse.ended).toBe(true)
    expect(sse.frames.map(f => f.event).at(-1)).toBe('video.copy_failed')
    const again = await readSse(`${base}/v1/videos/${task.id}/events`, { ...auth('alice'), 'last-event-id': last.id })
    expect(again.status).toBe(204)
    // It is off the sweep's list: nothing will try again.
    expect(await inCopying(h, task.id)).toBe(false)
    const seen = downloads.seen
    expect(await h.app.deps.copies.sweep()).toBe(0)
    await sleep(300)
    expect(downloads.seen).toBe(seen)
  })

  it('gives up at the first failure once upstream_expires_at has passed, but still tries first', async () => {
    const downloads = new Downloads()
    let failing = false
    downloads.failing = () => failing
    // 31 days on: every URL the simulator hands out is past Kling's 30 days.
    const h = await harness(downloads, { clock: () => Date.now() + 31 * DAY })
    const works = await createTask(h)
    expect(await until(async () => (await types(h, works.id)).includes('video.stored'))).toBe(true)

    failing = true
    const before = downloads.seen
    const task = await createTask(h)
    expect(await until(async () => (await types(h, task.id)).includes('video.copy_failed'))).toBe(true)
    expect(downloads.seen).toBe(before + 1)
    const error = (await waitFor(h, task.id, () => true)).result?.videos[0].copy_error
    expect(error).toMatchObject({ code: 'UPSTREAM_URL_EXPIRED', message: expect.stringMatching(/answered 500$/) })
  })

  it('copies in the reader on the first attempt, without a job; a failed first attempt becomes a delayed job',
    async () => {
      const downloads = new Downloads()
      let failing = false
      downloads.failing = () => failing
      const h = await harness(downloads, { env: { MIRROR_RETRY_BASE_MS: '60000', MIRROR_RETRY_MAX_MS: '600000' } })
      const { copies, store } = h.app.deps
      // BullMQ writes an `added` entry to the queue's events stream for every job it adds.
      const added = async (taskId: string) => (await h.redis.xrange(`${store.queuePrefix}:copy:events`, '-', '+'))
        .filter(([, f]) => f[1] === 'added' && f[3] === `copy-${taskId}`).length
      const ok = await createTask(h)
      expect(await until(async () => (await types(h, ok.id)).includes('video.stored'))).toBe(true)
      expect(await added(ok.id)).toBe(0)
      expect(downloads.seen).toBe(1)

      failing = true
      const later = await createTask(h)
      const jobId = `copy-${later.id}`
      expect(await until(async () => await copies.queue.getJobState(jobId) === 'delayed')).toBe(true)
      expect(await added(later.id)).toBe(1)
      const job = await copies.queue.getJob(jobId)
      // Due when the job's own first retry would have been: MIRROR_RETRY_BASE_MS, jittered down to half.
      expect(job?.opts.delay).toBeGreaterThanOrEqual(30_000)
      // The job knows one attempt was made before it, so its retries go on doubling from the second.
      expect(job?.data).toEqual({ taskId: later.id, tried: 1 })
      expect(await inCopying(h, later.id)).toBe(true)
    })

  it('a copy job that is lost is queued again by the periodic sweep', async () => {
    const downloads = new Downloads()
    let failing = true
    downloads.failing = () => failing
    // Slow retries, so the job sits delayed where it can be lost; the sweep runs every 200 ms.
    const env = { MIRROR_RETRY_BASE_MS: '60000', MIRROR_SWEEP_INTERVAL_MS: '200' }
    const h = await harness(downloads, { env })
    const { copies } = h.app.deps
    const task = await createTask(h)
    const jobId = `copy-${task.id}`
    expect(await until(async () => await copies.queue.getJobState(jobId) === 'delayed')).toBe(true)
    expect(await inCopying(h, task.id)).toBe(true)
    // Lost (Redis rolled back, a flushed queue): nothing would ever copy this result again but the sweep.
    failing = false
    await copies.queue.remove(jobId)
    expect(await until(async () => (await types(h, task.id)).includes('video.stored'))).toBe(true)
    expect(await inCopying(h, task.id)).toBe(false)
    expect((await content(h, task.id)).statusCode).toBe(200)
  })

  it('the sweep takes over a job an older version left failed, and tasks from before the copying set', async () => {
    const downloads = new Downloads()
    let failing = true
    downloads.failing = () => failing
    const h = await harness(downloads, { env: { MIRROR_RETRY_BASE_MS: '60000' } })
    const { copies } = h.app.deps
    const k = keys(h.prefix)
    const [a, b] = [await createTask(h), await createTask(h)]
    for (const t of [a, b]) {
      expect(await until(async () => await copies.queue.getJobState(`copy-${t.id}`) === 'delayed')).toBe(true)
      await copies.queue.remove(`copy-${t.id}`)
    }
    // a: what the old copy job did, 8 attempts then failed and kept; here one attempt, kept failed.
    const old = new Queue('copy', { connection: h.redis as never, prefix: h.app.deps.store.queuePrefix })
    open.push(old)
    await old.add('copy', { taskId: a.id }, { jobId: `copy-${a.id}`, attempts: 1, removeOnFail: false })
    expect(await until(async () => await old.getJobState(`copy-${a.id}`) === 'failed')).toBe(true)
    // b: succeeded before the copying set existed, so it is not in it (and the walk of older tasks is not done).
    await h.redis.zrem(k.copying, b.id)
    await h.redis.del(k.copyingBackfill)

    failing = false
    expect(await copies.sweep()).toBe(1) // b, found by the walk (a was queued less than a sweep interval ago)
    expect(await h.redis.get(k.copyingBackfill)).toBe('0') // the walk is through the index, and starts over
    expect(await until(async () => (await types(h, b.id)).includes('video.stored'))).toBe(true)
    expect(await types(h, a.id)).not.toContain('video.stored')
    const later = await startHarness({
      simulator: h.sim,
      workers: false,
      env: { REDIS_PREFIX: h.prefix, ...FAST },
      keepKeys: true,
      clock: () => Date.now() + 120_000
    })
    try {
      // A sweep a couple of minutes on (another replica's clock): a is due again, its failed job is replaced.
      expect(await later.app.deps.copies.sweep()).toBe(1)
    } finally {
      await later.close()
    }
    expect(await until(async () => (await types(h, a.id)).includes('video.stored'))).toBe(true)
    expect((await content(h, a.id)).statusCode).toBe(200)
  })
})

describe('the parts', () => {
  it('reads the expiry signed URLs carry, and nothing from URLs that carry none', () => {
    expect(urlExpiresAt('https://cdn.example.com/v.mp4?x-expires=1767225600&x-signature=ab')).toBe(1767225600_000)
    expect(urlExpiresAt('https://cdn.example.com/v.mp4?Expires=1767225600&Signature=x')).toBe(1767225600_000)
    expect(urlExpiresAt('https://b.oss.example.com/v.mp4?x-oss-expires=1767225600')).toBe(1767225600_000)
    const amz = 'https://s3.example.com/v.mp4?X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-Signature=f'
    expect(urlExpiresAt(amz)).toBe(Date.UTC(2026, 0, 1, 1))
    for (const url of ['https://cdn.example.com/v.mp4', 'https://cdn.example.com/v.mp4?expires=soon', 'not a url']) {
      expect(urlExpiresAt(url)).toBeNull()
    }
  })

  it('retries double from the base, at most the cap apart, which fits inside the expiry margin', () => {
    for (let n = 1; n < 40; n++) {
      const d = copyRetryDelay(n, 2000, 600_000)
      expect(d).toBeGreaterThanOrEqual(Math.min(2000 * 2 ** (n - 1), 600_000) / 2)
      expect(d).toBeLessThanOrEqual(600_000)
    }
    expect(EXPIRY_MARGIN_MS).toBeGreaterThanOrEqual(900_000) // MIRROR_RETRY_MAX_MS's maximum
  })
})
