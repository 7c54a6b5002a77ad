/**
 * The typed client (client/index.ts) against the real app on a loopback port, with the simulator upstream: a create
 * from image files and bytes, a wait over SSE to the end, a download whose bytes are the simulator's (also resumed
 * from a partial file), the fallback to polling when the caller's SSE place is taken, resuming with Last-Event-ID,
 * problems as GatewayProblem, and the Standard Webhooks check on a real delivery.
 */
import { describe, expect, it } from 'vitest'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createGatewayClient, GatewayProblem, verifyWebhook, type WaitUpdate } from '../client/index.ts'
import { Simulator } from '../simulator/app.ts'
import { harnessPerTest, KEYS, type Harness } from './helpers/harness.ts'
import { makeJpeg, makePng } from './helpers/images.ts'
import { Receiver } from './helpers/receiver.ts'

const startHarness = harnessPerTest()
const FAST = { processingAfterMs: 50, finishAfterMs: 150 }

const clientOf = (h: Harness, key = KEYS.alice) => createGatewayClient({ url: h.config.publicBaseUrl ?? '', key })

function tmp (): string {
  return mkdtempSync(join(tmpdir(), 'kg-client-'))
}

describe('typed client', () => {
  it('creates from a file and bytes, waits over SSE until succeeded, downloads the simulator\'s bytes', async () => {
    const h = await startHarness({ listen: true, sim: FAST })
    const client = clientOf(h)
    const dir = tmp()
    try {
      const png = join(dir, 'a.png')
      writeFileSync(png, makePng(640, 480))
      const task = await client.create('multi-image2video', { images: [png, makeJpeg(512, 512)], prompt: 'two wave' })
      expect(task.status).toBe('queued')
      expect(task.replayed).toBe(false)
      // The file was read and sent as Base64: the stored request has its hash and size, not a URL.
      const first = task.request.image_list?.[0].image
      expect(first).toMatchObject({ format: 'png', width: 640, height: 480 })

      const updates: WaitUpdate[] = []
      const done = await client.wait(task.id, { onEvent: u => updates.push(u), timeoutMs: 10_000 })
      expect(done.status).toBe('succeeded')
      expect(updates.length).toBeGreaterThan(0)
      expect(updates.every(u => u.via === 'sse')).toBe(true)
      expect(updates.at(-1)?.event?.type).toBe('video.succeeded')
      expect(done.lastEventId).toMatch(/^evt_/)

      const upstreamId = done.upstream?.task_id ?? ''
      const expected = Simulator.videoBytes(upstreamId)
      const out = join(dir, 'v.mp4')
      const file = await client.download(task.id, out, { timeoutMs: 10_000 })
      expect(file.bytes).toBe(expected.length)
      expect(readFileSync(out).equals(expected)).toBe(true)

      // A download cut half-way left a .part: the next one asks for the rest only (Range) and ends equal.
      const again = join(dir, 'again.mp4')
      writeFileSync(`${again}.part`, expected.subarray(0, 1000))
      await client.download(task.id, again)
      expect(readFileSync(again).equals(expected)).toBe(true)
      const ranged = h.logs.lines.map(l => JSON.parse(l) as { res?: { statusCode?: number } })
        .some(l => l.res?.statusCode === 206)
      expect(ranged).toBe(true)

      // Resuming after the last event: the stream answers 204 and wait returns the final task.
      const resumed = await client.wait(task.id, { lastEventId: updates.at(-1)?.event?.id, timeoutMs: 5000 })
      expect(resumed.status).toBe('succeeded')
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('sends an Idempotency-Key: the same key again is the same task, replayed', async () => {
    const h = await startHarness({ listen: true, workers: false })
    const client = clientOf(h)
    const body = { images: ['https://img.example.com/a.png', 'https://img.example.com/b.png'], prompt: 'p' }
    const a = await client.create('multi-image2video', body, { idempotencyKey: 'client-test-1' })
    const b = await client.create('multi-image2video', body, { idempotencyKey: 'client-test-1' })
    expect(b.id).toBe(a.id)
    expect(b.replayed).toBe(true)
    // Without a key of the caller's own one is made per call: two calls, two tasks.
    const c = await client.create('multi-image2video', body)
    expect(c.id).not.toBe(a.id)
  })

  it('falls back to polling when SSE is refused (the caller\'s only stream is held)', async () => {
    const h = await startHarness({
      listen: true,
      sim: { auto: false },
      env: { CALLER_LIMITS: JSON.stringify({ alice: { max_sse_streams: 1 } }) }
    })
    // A fetch that notes every answer, to see the SSE refusal the waiter got.
    const answers: string[] = []
    const recording: typeof fetch = async (input, init) => {
      const res = await fetch(input, init)
      answers.push(`${res.status} ${input instanceof Request ? input.url : String(input)}`)
      return res
    }
    const client = createGatewayClient({ url: h.config.publicBaseUrl ?? '', key: KEYS.alice, fetch: recording })
    const urls = { images: ['https://img.example.com/a.png', 'https://img.example.com/b.png'], prompt: 'p' }
    const held = await client.create('multi-image2video', urls)
    const task = await client.create('multi-image2video', urls)
    const hold = new AbortController()
    const stream = await fetch(`${h.config.publicBaseUrl}/v1/videos/${held.id}/events`, {
      headers: { authorization: `Bearer ${KEYS.alice}` }, signal: hold.signal
    })
    expect(stream.status).toBe(200)
    try {
      const updates: WaitUpdate[] = []
      const waiting = client.wait(task.id, { onEvent: u => updates.push(u), pollIntervalMs: 100, timeoutMs: 10_000 })
      // Finish the task upstream once it is there; the waiter only learns it by polling.
      const deadline = Date.now() + 5000
      let upstreamId: string | undefined
      while (upstreamId === undefined && Date.now() < deadline) {
        upstreamId = (await client.get(task.id)).upstream?.task_id
        if (upstreamId === undefined) await new Promise(resolve => setTimeout(resolve, 50))
      }
      expect(upstreamId).toBeDefined()
      h.sim.setStatus(upstreamId ?? '', 'succeed')
      const done = await waiting
      expect(done.status).toBe('succeeded')
      expect(updates.length).toBeGreaterThan(0)
      expect(updates.every(u => u.via === 'poll')).toBe(true)
      // The waiter did try SSE first, and was refused by the per-caller limit.
      expect(answers).toContain(`429 ${h.config.publicBaseUrl}/v1/videos/${task.id}/events`)
    } finally {
      hold.abort()
    }
  })

  it('throws a GatewayProblem carrying the problem+json', async () => {
    const h = await startHarness({ listen: true, workers: false })
    const err = await clientOf(h).get('no-such-task').catch((e: unknown) => e)
    expect(err).toBeInstanceOf(GatewayProblem)
    expect(err).toMatchObject({ status: 404, code: 'NOT_FOUND', problem: { status: 404, code: 'NOT_FOUND' } })
    const bad = await createGatewayClient({ url: h.config.publicBaseUrl ?? '', key: 'wrong-key-0123456789' }).get('x')
      .catch((e: unknown) => e)
    expect(bad).toMatchObject({ status: 401, code: 'UNAUTHORIZED' })
  })

  it('verifyWebhook accepts a real delivery and refuses a tampered one', async () => {
    const receiver = await Receiver.start()
    try {
      const h = await startHarness({ listen: true, sim: FAST })
      const client = clientOf(h)
      const endpoint = await client.unwrap(client.api.POST('/v1/webhook-endpoints', {
        body: { url: receiver.url('/hook'), event_types: ['video.queued'] }
      }))
      const secret = endpoint.secret ?? ''
      expect(secret).toMatch(/^whsec_/)
      const urls = { images: ['https://img.example.com/a.png', 'https://img.example.com/b.png'], prompt: 'p' }
      const task = await client.create('multi-image2video', urls)
      const deadline = Date.now() + 5000
      while (receiver.requests.length === 0 && Date.now() < deadline) {
        await new Promise(resolve => setTimeout(resolve, 25))
      }
      const delivery = receiver.requests[0]
      expect(delivery).toBeDefined()

      const payload = verifyWebhook(secret, delivery.headers, delivery.body)
      expect(payload.type).toBe('video.queued')
      expect(payload.data.id).toBe(task.id)
      expect(() => verifyWebhook(secret, delivery.headers, delivery.body.replace(task.id, 'someone-else'))).toThrow()
      const wrongSecret = 'whsec_' + Buffer.alloc(24, 7).toString('base64')
      expect(() => verifyWebhook(wrongSecret, delivery.headers, delivery.body)).toThrow()
    } finally {
      await receiver.close()
    }
  })
})
