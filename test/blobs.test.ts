/**
 * Where the bytes go (docs/DESIGN.md, "Where the bytes go"): result videos copied into the blob store and served with
 * Range, with both drivers (a directory, and S3 against s3rver on loopback) running the same cases; Base64 images
 * parked in Redis until upstream accepts, across a restart, under the PARKED_MAX_BYTES cap; and the large-body limiter.
 * Real app, real redis-server, real simulator, real HTTP where it matters; no mocks.
 */
import { keys } from '../src/store/keys.ts'
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import S3rver from 's3rver'
import { S3Client, ListObjectsV2Command } from '@aws-sdk/client-s3'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { DirectoryBlobStore } from '../src/blobs/dir.ts'
import { S3BlobStore } from '../src/blobs/s3.ts'
import { BlobSizeMismatch, type BlobStore } from '../src/blobs/index.ts'
import { Simulator, type SimOptions } from '../simulator/app.ts'
import { auth, KEYS, startHarness, type Harness } from './helpers/harness.ts'
import { createTask, getTask, validBody, waitFor } from './helpers/tasks.ts'
import { makePng } from './helpers/images.ts'

type Body = Record<string, unknown>

const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

/** Polls `check` every 20 ms until it holds, at most `ms`; returns whether it did. */
async function until (check: () => boolean | Promise<boolean>, ms = 5000): Promise<boolean> {
  for (let waited = 0; waited < ms; waited += 20) {
    if (await check()) return true
    await sleep(20)
  }
  return await check()
}

async function bytesOf (stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

/** A source that yields `first`, then fails, as a download cut off halfway would. */
function failingSource (first: Buffer): Readable {
  let sent = false
  return new Readable({
    read () {
      if (!sent) { sent = true; this.push(first); return }
      this.destroy(new Error('connection reset by peer'))
    }
  })
}

/**
 * Requests to the simulator whose path starts with `path` wait while the gate is shut; `seen` counts those that
 * reached it. Added as a hook before the simulator listens: the simulator itself is unchanged.
 */
class Gate {
  seen = 0
  private opened: Promise<void> = Promise.resolve()
  private release: () => void = () => {}

  constructor (readonly path: string) {}

  shut (): void { this.opened = new Promise(resolve => { this.release = resolve }) }
  open (): void { this.release() }

  async pass (request: FastifyRequest): Promise<void> {
    if (!request.url.startsWith(this.path)) return
    this.seen++
    await this.opened
  }
}

/**
 * The next `armed` video downloads are cut off halfway: the full Content-Length is announced, half the bytes
 * are sent, then the connection is dropped, as a flaky CDN would.
 */
class CutOff {
  armed = 0
  cut = 0

  pass (request: FastifyRequest, reply: FastifyReply): void {
    if (this.armed === 0 || !request.url.startsWith('/_sim/videos/')) return
    this.armed--
    const bytes = Simulator.videoBytes(request.url.slice('/_sim/videos/'.length).replace(/\.mp4$/, ''))
    reply.hijack()
    reply.raw.writeHead(200, { 'content-type': 'video/mp4', 'content-length': String(bytes.length) })
    reply.raw.write(bytes.subarray(0, bytes.length / 2), () => {
      this.cut++
      reply.raw.destroy()
    })
  }
}

/** A simulator on loopback with gates and a log of every create body it received. */
async function gatedSimulator (
  opts: SimOptions,
  ...gates: Array<Gate | CutOff>
): Promise<{ sim: Simulator, creates: Body[] }> {
  const sim = new Simulator({ apiKey: KEYS.comet, ...opts })
  const creates: Body[] = []
  sim.app.addHook('preHandler', async (request, reply) => {
    if (request.method === 'POST' && request.url.startsWith('/kling/')) {
      creates.push(structuredClone(request.body) as Body)
    }
    for (const gate of gates) {
      if (gate instanceof CutOff) gate.pass(request, reply)
      else await gate.pass(request)
      if (reply.sent) return reply
    }
  })
  await sim.listen()
  // A request still held at the end must not keep the simulator from closing.
  const close = sim.close.bind(sim)
  sim.close = async () => { for (const gate of gates) if (gate instanceof Gate) gate.open(); await close() }
  return { sim, creates }
}

/** A blob store under test, with a way to see every object it holds (to prove a failed put left nothing). */
interface Driver { blobs: BlobStore, objects: () => Promise<string[]>, stop: () => Promise<void> }

const drivers: Array<{ name: string, start: () => Promise<Driver> }> = [
  {
    name: 'directory',
    start: async () => {
      const root = await mkdtemp(join(tmpdir(), 'kg-blobs-test-'))
      const blobs = new DirectoryBlobStore(root)
      return {
        blobs,
        objects: async () => (await readdir(root, { recursive: true, withFileTypes: true }))
          .filter(e => e.isFile())
          .map(e => join(e.parentPath, e.name).slice(root.length + 1))
          .sort(),
        stop: async () => { await blobs.close(); await rm(root, { recursive: true, force: true }) }
      }
    }
  },
  {
    name: 's3',
    start: async () => {
      const directory = await mkdtemp(join(tmpdir(), 'kg-s3rver-'))
      const server = new S3rver({
        port: 0, address: '127.0.0.1', silent: true, directory, configureBuckets: [{ name: 'kg-test' }]
      })
      const { port } = await server.run()
      const endpoint = `http://127.0.0.1:${port}`
      const creds = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' }
      const blobs = new S3BlobStore({
        bucket: 'kg-test', endpoint, region: 'us-east-1', ...creds, forcePathStyle: true, prefix: ''
      })
      // A second client, only to list the bucket.
      const lister = new S3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials: creds })
      return {
        blobs,
        objects: async () => ((await lister.send(new ListObjectsV2Command({ Bucket: 'kg-test' }))).Contents ?? [])
          .map(o => o.Key ?? '')
          .sort(),
        stop: async () => {
          await blobs.close()
          lister.destroy()
          await server.close()
          await rm(directory, { recursive: true, force: true })
        }
      }
    }
  }
]

describe.each(drivers)('$name blob store', ({ start }) => {
  let d: Driver
  beforeAll(async () => { d = await start() })
  afterAll(async () => { await d?.stop() })

  describe('driver', () => {
    // Each case works under its own key prefix, so they need no order and no cleanup between them.
    const key = (name: string) => `videos/${randomBytes(6).toString('hex')}/${name}`

    it('puts, stats, reads whole and by range, and deletes', async () => {
      const data = randomBytes(10_000)
      const k = key('0.mp4')
      expect(await d.blobs.stat(k)).toBeNull()
      const chunks = Readable.from([data.subarray(0, 4000), data.subarray(4000)])
      expect(await d.blobs.put(k, chunks, { contentType: 'video/mp4', size: data.length }))
        .toEqual({ size: 10_000, contentType: 'video/mp4' })
      expect(await d.blobs.stat(k)).toEqual({ size: 10_000, contentType: 'video/mp4' })
      expect((await bytesOf(await d.blobs.read(k))).equals(data)).toBe(true)
      expect((await bytesOf(await d.blobs.read(k, { start: 100, end: 199 }))).equals(data.subarray(100, 200)))
        .toBe(true)
      // (Not `0-0`: s3rver 3 reads an end of 0 as "to the end"; S3 itself does not.)
      expect((await bytesOf(await d.blobs.read(k, { start: 0, end: 1 }))).equals(data.subarray(0, 2))).toBe(true)
      expect((await bytesOf(await d.blobs.read(k, { start: 9990, end: 9999 }))).equals(data.subarray(9990))).toBe(true)
      // Without a size the put takes what arrives.
      const other = key('1.bin')
      expect(await d.blobs.put(other, Readable.from([Buffer.from('abc')]), { contentType: 'application/octet-stream' }))
        .toEqual({ size: 3, contentType: 'application/octet-stream' })
      expect((await bytesOf(await d.blobs.read(other))).toString()).toBe('abc')
      await d.blobs.delete(k)
      await d.blobs.delete(other)
      expect(await d.blobs.stat(k)).toBeNull()
      expect(await d.blobs.stat(other)).toBeNull()
      // Deleting what is not there is fine.
      await d.blobs.delete(k)
      expect((await d.objects()).filter(o => o.includes(k.split('/')[1]) || o.includes(other.split('/')[1])))
        .toEqual([])
    })

    it('rejects a put whose size is wrong, leaving nothing readable, ' +
      'and leaves an existing blob as it was', async () => {
      const before = await d.objects()
      const k = key('0.mp4')
      const data = randomBytes(5000)
      for (const size of [data.length + 1, data.length - 1]) {
        await expect(d.blobs.put(k, Readable.from([data]), { contentType: 'video/mp4', size }))
          .rejects.toBeInstanceOf(BlobSizeMismatch)
        expect(await d.blobs.stat(k)).toBeNull()
      }
      expect(await d.objects()).toEqual(before)

      const old = randomBytes(300)
      await d.blobs.put(k, Readable.from([old]), { contentType: 'video/mp4', size: old.length })
      const stored = await d.objects()
      await expect(d.blobs.put(k, Readable.from([data]), { contentType: 'video/webm', size: 1 }))
        .rejects.toBeInstanceOf(BlobSizeMismatch)
      expect(await d.blobs.stat(k)).toEqual({ size: 300, contentType: 'video/mp4' })
      expect((await bytesOf(await d.blobs.read(k))).equals(old)).toBe(true)
      expect(await d.objects()).toEqual(stored)
      await d.blobs.delete(k)
      expect(await d.objects()).toEqual(before)
    })

    it('stores nothing when the source stream fails', async () => {
      const before = await d.objects()
      const k = key('0.mp4')
      await expect(d.blobs.put(k, failingSource(randomBytes(2048)), { contentType: 'video/mp4' }))
        .rejects.toThrow('connection reset by peer')
      await expect(d.blobs.put(k, failingSource(randomBytes(2048)), { contentType: 'video/mp4', size: 4096 }))
        .rejects.toThrow('connection reset by peer')
      // Failing before a single byte arrives, too.
      const early = new Readable({ read () { this.destroy(new Error('refused')) } })
      await expect(d.blobs.put(k, early, { contentType: 'video/mp4' })).rejects.toThrow('refused')
      expect(await d.blobs.stat(k)).toBeNull()
      // The directory driver's stream may close its temp file a moment after the put rejects: give it that moment.
      await sleep(50)
      expect(await d.objects()).toEqual(before)
    })
  })

  describe('result videos end to end', () => {
    let h: Harness
    let sim: Simulator
    const download = new Gate('/_sim/videos/')
    const cutOff = new CutOff()
    beforeAll(async () => {
      ({ sim } = await gatedSimulator({ processingAfterMs: 30, finishAfterMs: 80 }, download, cutOff))
      h = await startHarness({ simulator: sim, blobs: d.blobs, listen: true, env: { RECONCILE_INTERVAL_MS: '60000' } })
    })
    afterAll(async () => {
      await h?.close()
      await sim?.close()
    })

    const content = async (
      id: string,
      who: 'alice' | 'bob' | 'ops' = 'alice',
      headers: Record<string, string> = {},
      query = ''
    ) =>
      await h.app.inject({ url: `/v1/videos/${id}/content${query}`, headers: { ...auth(who), ...headers } })

    it('copies a succeeded task\'s video, announces video.stored, and serves it whole and by range', async () => {
      download.shut()
      const task = await createTask(h)
      const done = await waitFor(h, task.id, t => t.status === 'succeeded')
      expect(done.status).toBe('succeeded')
      const upstreamId = done.upstream?.task_id as string
      const video = done.result?.videos[0]
      expect(video?.url).toBe(`${h.config.publicBaseUrl as string}/v1/videos/${task.id}/content`)
      expect(video?.url.endsWith(`/v1/videos/${task.id}/content`)).toBe(true)
      expect(video?.upstream_url).toBe(`${sim.baseUrl}/_sim/videos/${upstreamId}.mp4`)

      // While the copy is held up, the content is not there yet: 409 with Retry-After, and no video.stored.
      expect(await until(() => download.seen > 0)).toBe(true)
      const early = await content(task.id)
      expect(early.statusCode, early.body).toBe(409)
      expect(early.json().code).toBe('CONTENT_NOT_READY')
      expect(early.headers['retry-after']).toBe('5')
      expect((await h.app.deps.store.events(task.id)).map(e => e.type)).not.toContain('video.stored')
      download.open()

      const isStored = async () => (await h.app.deps.store.events(task.id)).some(e => e.type === 'video.stored')
      expect(await until(isStored)).toBe(true)
      const events = await h.app.deps.store.events(task.id)
      const types = events.map(e => e.type)
      expect(types.indexOf('video.stored')).toBeGreaterThan(types.indexOf('video.succeeded'))
      expect(types.filter(t => t === 'video.stored')).toHaveLength(1)
      expect(events.map(e => e.sequence)).toEqual(events.map((_, i) => i + 1))
      const stored = await getTask(h, task.id)
      expect(stored.status).toBe('succeeded')

      const expected = Simulator.videoBytes(upstreamId)
      const size = expected.length
      expect(await d.blobs.stat(`videos/${task.id}/0.mp4`)).toEqual({ size, contentType: 'video/mp4' })

      const whole = await content(task.id)
      expect(whole.statusCode).toBe(200)
      expect(whole.headers['content-type']).toBe('video/mp4')
      expect(whole.headers['accept-ranges']).toBe('bytes')
      expect(Number(whole.headers['content-length'])).toBe(size)
      expect(whole.rawPayload.equals(expected)).toBe(true)

      const first = await content(task.id, 'alice', { range: 'bytes=0-99' })
      expect(first.statusCode).toBe(206)
      expect(first.headers['content-range']).toBe(`bytes 0-99/${size}`)
      expect(first.headers['content-length']).toBe('100')
      expect(first.headers['content-type']).toBe('video/mp4')
      expect(first.rawPayload.equals(expected.subarray(0, 100))).toBe(true)

      const suffix = await content(task.id, 'alice', { range: 'bytes=-10' })
      expect(suffix.statusCode).toBe(206)
      expect(suffix.headers['content-range']).toBe(`bytes ${size - 10}-${size - 1}/${size}`)
      expect(suffix.rawPayload.equals(expected.subarray(size - 10))).toBe(true)

      const tail = await content(task.id, 'alice', { range: `bytes=${size - 6}-` })
      expect(tail.statusCode).toBe(206)
      expect(tail.headers['content-range']).toBe(`bytes ${size - 6}-${size - 1}/${size}`)
      expect(tail.rawPayload.equals(expected.subarray(size - 6))).toBe(true)

      const past = await content(task.id, 'alice', { range: `bytes=${size - 4}-${size + 1000}` })
      expect(past.statusCode).toBe(206)
      expect(past.headers['content-range']).toBe(`bytes ${size - 4}-${size - 1}/${size}`)
      expect(past.rawPayload.equals(expected.subarray(size - 4))).toBe(true)

      for (const range of [`bytes=${size}-`, `bytes=${size + 10}-${size + 20}`, 'bytes=-0']) {
        const bad = await content(task.id, 'alice', { range })
        expect(bad.statusCode, range).toBe(416)
        expect(bad.headers['content-type']).toMatch(/^application\/problem\+json/)
        expect(bad.headers['content-range']).toBe(`bytes */${size}`)
        expect(bad.json().code).toBe('RANGE_NOT_SATISFIABLE')
      }

      // The same over real HTTP, at the URL the task gives.
      const res = await fetch(video?.url as string, { headers: { ...auth('alice'), range: 'bytes=1000-1999' } })
      expect(res.status).toBe(206)
      expect(res.headers.get('content-range')).toBe(`bytes 1000-1999/${size}`)
      expect(Buffer.from(await res.arrayBuffer()).equals(expected.subarray(1000, 2000))).toBe(true)
      const full = await fetch(video?.url as string, { headers: auth('alice') })
      expect(full.status).toBe(200)
      expect(Buffer.from(await full.arrayBuffer()).equals(expected)).toBe(true)

      // Isolation: another caller sees nothing, an admin sees it all; there is no second video.
      const bob = await content(task.id, 'bob')
      expect(bob.statusCode).toBe(404)
      expect(bob.headers['content-type']).toMatch(/^application\/problem\+json/)
      const ops = await content(task.id, 'ops')
      expect(ops.statusCode).toBe(200)
      expect(ops.rawPayload.equals(expected)).toBe(true)
      expect((await content(task.id, 'alice', {}, '?index=1')).statusCode).toBe(404)
      expect((await h.app.inject({ url: `/v1/videos/${task.id}/content` })).statusCode).toBe(401)
      expect((await content('00000000-0000-4000-8000-000000000000')).statusCode).toBe(404)
    })

    it('stores nothing of a download cut off halfway, and copies the video on the next attempt', async () => {
      cutOff.armed = 1
      const task = await createTask(h)
      const done = await waitFor(h, task.id, t => t.status === 'succeeded')
      expect(done.status).toBe('succeeded')
      expect(await until(() => cutOff.cut === 1)).toBe(true)
      // The failed attempt leaves nothing behind, not even a temporary file, and the content is not there yet.
      expect(await until(async () => (await d.objects()).every(o => !o.includes(task.id)), 3000)).toBe(true)
      expect(await d.blobs.stat(`videos/${task.id}/0.mp4`)).toBeNull()
      expect((await content(task.id)).statusCode).toBe(409)
      // The mirror job retries (after ~2 s) and gets it whole.
      const isStored = async () => (await h.app.deps.store.events(task.id)).some(e => e.type === 'video.stored')
      expect(await until(isStored, 10_000)).toBe(true)
      const whole = await content(task.id)
      expect(whole.statusCode).toBe(200)
      expect(whole.rawPayload.equals(Simulator.videoBytes(done.upstream?.task_id as string))).toBe(true)
    })

    it('answers 409 for a task that has not succeeded', async () => {
      sim.opts.auto = false
      try {
        const task = await createTask(h)
        const submitted = await waitFor(h, task.id, t => t.status === 'submitted')
        expect(submitted.status).toBe('submitted')
        const res = await content(task.id)
        expect(res.statusCode, res.body).toBe(409)
        expect(res.headers['content-type']).toMatch(/^application\/problem\+json/)
        expect(res.json().code).toBe('NOT_SUCCEEDED')
        expect((await content(task.id, 'bob')).statusCode).toBe(404)
        expect(await d.blobs.stat(`videos/${task.id}/0.mp4`)).toBeNull()
      } finally {
        sim.opts.auto = true
      }
    })
  })
})

const png = makePng(640, 360)
const png2 = makePng(640, 360, 0x40)
const b64 = (buf: Buffer) => buf.toString('base64')

describe('parked images', () => {
  let open: Array<{ close: () => Promise<void> }> = []
  afterEach(async () => { for (const x of open.reverse()) await x.close(); open = [] })
  async function harness (...args: Parameters<typeof startHarness>): Promise<Harness> {
    const h = await startHarness(...args)
    open.push(h)
    return h
  }
  const create = async (h: Harness, body: Body, headers: Record<string, string> = {}) =>
    await h.app.inject({ method: 'POST', url: '/v1/videos', headers: { ...auth('alice'), ...headers }, payload: body })
  const parkedKeys = async (h: Harness) => await h.redis.keys(`${keys(h.prefix).prefix}task:*:parked`)

  it('keeps Base64 images parked until upstream accepts the task, then lets them go', async () => {
    const accept = new Gate('/kling/')
    const { sim, creates } = await gatedSimulator({ auto: false }, accept)
    open.push(sim)
    const h = await harness({ simulator: sim })
    const { store } = h.app.deps
    accept.shut()
    const res = await create(h, validBody({
      image_list: [{ image: b64(png) }, { image: `data:image/png;base64,${b64(png2)}` }]
    }))
    expect(res.statusCode, res.body.slice(0, 300)).toBe(202)
    const id = res.json().id as string

    // The create is on its way to the simulator and held there: the images wait in Redis.
    expect(await until(() => accept.seen > 0)).toBe(true)
    expect(await h.redis.exists(keys(h.prefix).parked(id))).toBe(1)
    const parked = await store.parked(id)
    expect([...parked.keys()].sort()).toEqual(['/image_list/0/image', '/image_list/1/image'])
    expect(parked.get('/image_list/0/image')?.equals(png)).toBe(true)
    expect(parked.get('/image_list/1/image')?.equals(png2)).toBe(true)
    expect(await store.parkedBytes()).toBe(png.length + png2.length)
    expect((await getTask(h, id)).status).toBe('queued')

    accept.open()
    expect((await waitFor(h, id, t => t.status === 'submitted')).status).toBe('submitted')
    expect(await until(async () => await h.redis.exists(keys(h.prefix).parked(id)) === 0)).toBe(true)
    expect(await store.parkedBytes()).toBe(0)
    expect(creates).toHaveLength(1)
    expect((creates[0].image_list as Body[]).map(i => i.image)).toEqual([b64(png), b64(png2)])
  })

  it.each([
    { job: 'survived', lost: false },
    { job: 'was lost', lost: true }
  ])('survives a restart between create and submit (the submit job $job): ' +
    'the next replica sends the parked images and drops them', async ({ lost }) => {
    const { sim, creates } = await gatedSimulator({ auto: false })
    open.push(sim)
    const env = { REDIS_PREFIX: `t${randomBytes(6).toString('hex')}`, RECONCILE_INTERVAL_MS: '60000' }

    // Replica A takes the create but dies before any worker of it submits.
    const a = await startHarness({ simulator: sim, workers: false, env, keepKeys: true })
    let aClosed = false
    open.push({ close: async () => { if (!aClosed) await a.close() } })
    // (Two Base64 images, not a mask: multi-image2video takes no masks, docs/API.md, "Models".)
    const res = await create(a, validBody({ image_list: [{ image: b64(png) }, { image: b64(png2) }] }))
    expect(res.statusCode, res.body.slice(0, 300)).toBe(202)
    const id = res.json().id as string
    expect(await a.redis.exists(keys(a.prefix).parked(id))).toBe(1)
    expect(await a.app.deps.store.parkedBytes()).toBe(png.length + png2.length)
    // A crash between storing the task and queueing its job leaves a queued task with no job behind it.
    if (lost) expect(await a.app.deps.jobs.queue.remove(id)).toBe(1)
    aClosed = true
    await a.close()
    expect(creates).toHaveLength(0)

    // Replica B on the same prefix (its submit worker may take the surviving job at once).
    const b = await harness({ simulator: sim, env })
    const { store } = b.app.deps
    // Whether or not the BullMQ job survived, the reconciler queues it again (a second enqueue is a no-op).
    const outcome = await b.app.deps.reconcile.checkTask(id)
    if (lost) expect(outcome).toBe('requeued')
    else expect(['requeued', 'unknown', 'unchanged', 'applied']).toContain(outcome)
    const task = await waitFor(b, id, t => t.status === 'submitted')
    expect(task.status).toBe('submitted')
    expect(creates).toHaveLength(1)
    expect((creates[0].image_list as Body[]).map(i => i.image)).toEqual([b64(png), b64(png2)])
    expect(sim.acceptedFor(creates[0].external_task_id as string)).toBe(1)
    expect(await until(async () => await b.redis.exists(keys(b.prefix).parked(id)) === 0)).toBe(true)
    expect(await store.parkedBytes()).toBe(0)
  })

  it('answers 503 with Retry-After past PARKED_MAX_BYTES and stores nothing of that create', async () => {
    const h = await harness({ workers: false, env: { PARKED_MAX_BYTES: '2000' } })
    const { store } = h.app.deps
    const one = { image_list: [{ image: b64(png) }, { image: 'https://img.example.com/b.png' }] }
    const first = await create(h, validBody(one))
    expect(first.statusCode, first.body.slice(0, 300)).toBe(202)
    expect(await store.parkedBytes()).toBe(png.length)
    const tasksBefore = (await h.redis.keys(`${keys(h.prefix).prefix}task:*`)).sort()

    const two = { image_list: [{ image: b64(png) }, { image: b64(png2) }] }
    for (const headers of [{}, { 'idempotency-key': 'over-the-cap-1' }] as Array<Record<string, string>>) {
      const over = await create(h, validBody(two), headers)
      expect(over.statusCode, over.body.slice(0, 300)).toBe(503)
      expect(over.headers['content-type']).toMatch(/^application\/problem\+json/)
      expect(over.headers['retry-after']).toMatch(/^\d+$/)
      expect(Number(over.headers['retry-after'])).toBeGreaterThan(0)
      expect(over.json().code).toBe('UNAVAILABLE')
      expect(over.body).not.toContain(b64(png).slice(0, 40))
    }
    // Nothing of it: no task, no parked images, no reserved bytes, no event, and the Idempotency-Key is free.
    expect(await store.parkedBytes()).toBe(png.length)
    expect(await parkedKeys(h)).toHaveLength(1)
    expect((await h.redis.keys(`${keys(h.prefix).prefix}task:*`)).sort()).toEqual(tasksBefore)
    expect(await h.redis.xlen(keys(h.prefix).events)).toBe(1)
    expect((await store.list({ caller: 'alice', limit: 10 })).tasks).toHaveLength(1)
    expect(await h.redis.exists(keys(h.prefix).idempotency('alice', 'over-the-cap-1'))).toBe(0)

    // What fits under the cap is still taken.
    const fits = await create(h, validBody(one), { 'idempotency-key': 'over-the-cap-1' })
    expect(fits.statusCode, fits.body.slice(0, 300)).toBe(202)
    expect(await store.parkedBytes()).toBe(2 * png.length)
    // Canceling a queued task gives its bytes back.
    const cancelUrl = `/v1/videos/${first.json().id as string}/cancel`
    expect((await h.app.inject({ method: 'POST', url: cancelUrl, headers: auth('alice') })).statusCode).toBe(200)
    expect(await store.parkedBytes()).toBe(png.length)
    expect(await parkedKeys(h)).toHaveLength(1)
    // So does a create refused for its reference.
    expect((await create(h, validBody({ reference: 'order-1' }))).statusCode).toBe(202)
    const taken = await create(h, validBody({ ...one, reference: 'order-1' }))
    expect(taken.statusCode, taken.body.slice(0, 300)).toBe(409)
    expect(taken.json().code).toBe('REFERENCE_TAKEN')
    expect(await store.parkedBytes()).toBe(png.length)
    expect(await parkedKeys(h)).toHaveLength(1)

    // Concurrent creates cannot pass the cap together: room for one more image, five ask at once.
    const burst = await Promise.all(Array.from({ length: 5 }, async () => await create(h, validBody(one))))
    expect(burst.map(r => r.statusCode).sort()).toEqual([202, 503, 503, 503, 503])
    expect(await store.parkedBytes()).toBe(2 * png.length)
    expect(await parkedKeys(h)).toHaveLength(2)
  })
})

describe('large-body limiter', () => {
  let h: Harness | undefined
  let slow: ClientRequest | undefined
  afterEach(async () => {
    slow?.destroy()
    await h?.close()
    h = undefined
  })

  it('turns away a second large create while one is in flight, and takes one again once it is done', async () => {
    h = await startHarness({
      listen: true,
      workers: false,
      // The replica's cap is what this is about: the caller's own (default 1) would answer 429 first.
      env: { CREATE_MAX_LARGE_BODIES: '1', CALLER_MAX_LARGE_BODIES: '0', LARGE_BODY_BYTES: '1024' }
    })
    const base = h.config.publicBaseUrl as string
    const large = JSON.stringify(validBody({ image_list: [{ image: b64(png) }, { image: 'https://img.example.com/b.png' }] }))
    expect(large.length).toBeGreaterThan(1024)
    const post = async (body: string) => await fetch(`${base}/v1/videos`, {
      method: 'POST', headers: { ...auth('alice'), 'content-type': 'application/json' }, body
    })

    // The first large create sends its headers and half its body, then stalls.
    const url = new URL(`${base}/v1/videos`)
    const req = httpRequest({
      host: url.hostname,
      port: url.port,
      path: url.pathname,
      method: 'POST',
      headers: { ...auth('alice'), 'content-type': 'application/json', 'content-length': Buffer.byteLength(large) }
    })
    slow = req
    const answered = new Promise<{ status: number, body: string }>((resolve, reject) => {
      req.on('response', (res: IncomingMessage) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => { body += c })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
        res.on('error', reject)
      })
      req.on('error', reject)
    })
    const half = Math.floor(large.length / 2)
    req.write(large.slice(0, half))
    // The gateway has begun handling it once it logs the request; its onRequest hooks follow straight after.
    const logged = () => h?.logs.lines.some(l => l.includes('incoming request') && l.includes('"POST"')) === true
    expect(await until(logged)).toBe(true)
    await sleep(100)

    const second = await post(large)
    expect(second.status).toBe(503)
    expect(second.headers.get('content-type')).toMatch(/^application\/problem\+json/)
    expect(Number(second.headers.get('retry-after'))).toBeGreaterThan(0)
    expect((await second.json()).code).toBe('UNAVAILABLE')

    // Small creates are not held back by it.
    const small = await post(JSON.stringify(validBody()))
    expect(small.status).toBe(202)

    req.end(large.slice(half))
    const first = await answered
    expect(first.status, first.body.slice(0, 300)).toBe(202)

    const third = await post(large)
    expect(third.status, (await third.clone().text()).slice(0, 300)).toBe(202)
    // Only the two large creates that were taken parked anything.
    expect(await h.app.deps.store.parkedBytes()).toBe(2 * png.length)

    // A large create its client abandons halfway gives its place back too.
    const gone = httpRequest({
      host: url.hostname,
      port: url.port,
      path: url.pathname,
      method: 'POST',
      headers: { ...auth('alice'), 'content-type': 'application/json', 'content-length': Buffer.byteLength(large) }
    })
    slow = gone
    gone.on('error', () => {})
    gone.write(large.slice(0, half))
    const seen = () => h?.logs.lines.filter(l => l.includes('incoming request') && l.includes('"POST"')).length ?? 0
    const before = seen()
    expect(await until(() => seen() > before)).toBe(true)
    await sleep(100)
    expect((await post(large)).status).toBe(503)
    gone.destroy()
    let after = 0
    expect(await until(async () => { after = (await post(large)).status; return after !== 503 }, 3000)).toBe(true)
    expect(after).toBe(202)
  })
})
