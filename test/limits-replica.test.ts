/**
 * Per-caller limits kept on each replica (docs/API.md, "Per-caller limits"; issue 13): large create bodies per
 * caller beside the replica's CREATE_MAX_LARGE_BODIES, the body-read deadline and minimum rate that cut a slow
 * upload (and free its slot), and SSE streams per caller. Over real loopback sockets: slow uploads and aborts do
 * not exist under `inject`.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { connect, type Socket } from 'node:net'
import { auth, KEYS, harnessPerTest, type Harness } from './helpers/harness.ts'
import { createTask, validBody } from './helpers/tasks.ts'
import { makePng } from './helpers/images.ts'

const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

/** Polls `check` every 20 ms until it holds, at most `ms`; returns whether it did. */
async function until (check: () => boolean | Promise<boolean>, ms = 3000): Promise<boolean> {
  for (let waited = 0; waited < ms; waited += 20) {
    if (await check()) return true
    await sleep(20)
  }
  return await check()
}

type Who = 'alice' | 'bob' | 'ops'
interface Answer { status: number, headers: Record<string, string>, body: string, at: number }

/** A create sent by hand on its own socket, so that its body can come as slowly as a test likes, or stop. */
class Upload {
  private readonly socket: Socket
  private out = ''
  private drip: NodeJS.Timeout | undefined
  readonly started = Date.now()
  /** The answer once the server closes the connection (every upload asks for `Connection: close`). */
  readonly answer: Promise<Answer>

  constructor (base: string, who: Who, readonly body: string) {
    const url = new URL(base)
    this.socket = connect(Number(url.port), url.hostname)
    // The server may close while we still write: EPIPE/ECONNRESET are part of being cut.
    this.socket.on('error', () => {})
    this.answer = new Promise(resolve => {
      this.socket.on('data', (d: Buffer) => { this.out += d.toString('utf8') })
      this.socket.on('close', () => { clearInterval(this.drip); resolve(parseAnswer(this.out)) })
    })
    this.socket.write(`POST /v1/videos HTTP/1.1\r\nHost: ${url.host}\r\nAuthorization: Bearer ${KEYS[who]}\r\n` +
      'Content-Type: application/json\r\nConnection: close\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n`)
  }

  send (from: number, to = this.body.length) { this.socket.write(this.body.slice(from, to)) }

  /** One more byte of the body every `ms`, from `from` on. */
  dripFrom (from: number, ms: number) {
    let at = from
    this.drip = setInterval(() => { if (at < this.body.length) this.socket.write(this.body[at++]) }, ms)
  }

  /** The client goes away mid-body. */
  abort () {
    clearInterval(this.drip)
    this.socket.destroy()
  }
}

function parseAnswer (raw: string): Answer {
  const cut = raw.indexOf('\r\n\r\n')
  const head = cut < 0 ? raw : raw.slice(0, cut)
  const [line, ...lines] = head.split('\r\n')
  const headers = Object.fromEntries(lines.map(l => {
    const i = l.indexOf(':')
    return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()]
  }))
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(line)?.[1] ?? 0)
  return { status, headers, body: raw.slice(cut + 4), at: Date.now() }
}

async function within<T> (p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)
  })
  try { return await Promise.race([p, late]) } finally { clearTimeout(timer) }
}

const png = makePng(640, 360)
const large = JSON.stringify(validBody({
  image_list: [{ image: png.toString('base64') }, { image: 'https://img.example.com/b.png' }]
}))
const small = JSON.stringify(validBody())

const start = harnessPerTest()
// Registered after the harness's: hooks run in reverse, so every socket is gone before the app closes (a request
// still being read would hold app.close()).
const uploads: Upload[] = []
const streams: AbortController[] = []
afterEach(() => {
  for (const u of uploads.splice(0)) u.abort()
  for (const s of streams.splice(0)) s.abort()
})

async function listening (env: Record<string, string>): Promise<{ h: Harness, base: string }> {
  const h = await start({ listen: true, workers: false, env: { LARGE_BODY_BYTES: '1024', ...env } })
  expect(large.length).toBeGreaterThan(1024)
  return { h, base: h.config.publicBaseUrl as string }
}

const post = async (base: string, who: Who, body: string) => await fetch(`${base}/v1/videos`, {
  method: 'POST', headers: { ...auth(who), 'content-type': 'application/json' }, body
})

/** Starts an upload that sends half its body and waits there, once the gateway has begun handling it. */
async function stalled (h: Harness, base: string, who: Who, drip?: number): Promise<Upload> {
  const seen = () => h.logs.lines.filter(l => l.includes('incoming request') && l.includes('"POST"')).length
  const before = seen()
  const u = new Upload(base, who, large)
  uploads.push(u)
  const half = Math.floor(large.length / 2)
  u.send(0, half)
  if (drip !== undefined) u.dripFrom(half, drip)
  // Its onRequest hooks (the slot) run right after the request is logged.
  expect(await until(() => seen() > before)).toBe(true)
  await sleep(100)
  return u
}

const problemOf = async (res: Response) => {
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/)
  return await res.json() as Record<string, unknown>
}

describe('large create bodies per caller', () => {
  it('gives a caller with its slots full 429 CALLER_LIMIT, while another caller still gets 202', async () => {
    const { h, base } = await listening({
      CREATE_MAX_LARGE_BODIES: '3',
      CALLER_MAX_LARGE_BODIES: '1',
      CALLER_LIMITS: '{"bob":{"max_large_bodies":2}}',
      CREATE_BODY_MIN_BYTES_PER_S: '0'
    })
    const held = await stalled(h, base, 'alice')

    const refused = await post(base, 'alice', large)
    expect(refused.status).toBe(429)
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
    const p = await problemOf(refused)
    expect(p).toMatchObject({ code: 'CALLER_LIMIT', limit: 'max_large_bodies', limit_value: 1, status: 429 })
    // A small body takes no slot; another caller's large one takes its own.
    expect((await post(base, 'alice', small)).status).toBe(202)
    expect((await post(base, 'bob', large)).status).toBe(202)

    // Bob's own override (2): one stalled and one more fill it, and the replica's 3 are all taken.
    const bobHeld = await stalled(h, base, 'bob')
    const third = await stalled(h, base, 'bob')
    const bobRefused = await post(base, 'bob', large)
    expect(bobRefused.status).toBe(429)
    expect(await problemOf(bobRefused)).toMatchObject({ limit: 'max_large_bodies', limit_value: 2 })
    // A caller under its own limit meets the replica's: 503 as before.
    const full = await post(base, 'ops', large)
    expect(full.status).toBe(503)
    expect((await problemOf(full)).code).toBe('UNAVAILABLE')

    // The stalled bodies complete: their creates are accepted and their places are free again.
    for (const u of [held, bobHeld, third]) u.send(Math.floor(large.length / 2))
    for (const u of [held, bobHeld, third]) expect((await within(u.answer, 5000)).status).toBe(202)
    expect((await post(base, 'alice', large)).status).toBe(202)
  })

  it('frees the slot of a create whose client goes away mid-body, and creates nothing for it', async () => {
    const { h, base } = await listening({ CALLER_MAX_LARGE_BODIES: '1', CREATE_BODY_MIN_BYTES_PER_S: '0' })
    const gone = await stalled(h, base, 'alice')
    expect((await post(base, 'alice', large)).status).toBe(429)

    gone.abort()
    let status = 0
    expect(await until(async () => { status = (await post(base, 'alice', large)).status; return status !== 429 }))
      .toBe(true)
    expect(status).toBe(202)
    // Only the create that got its 202 made a task.
    const list = await h.app.inject({ url: '/v1/videos', headers: auth('alice') })
    expect(list.json().data).toHaveLength(1)
  })
})

describe('body-read deadline and minimum rate', () => {
  it('cuts an upload slower than CREATE_BODY_MIN_BYTES_PER_S with 408, and its slot is free at once', async () => {
    const { h, base } = await listening({
      CREATE_MAX_LARGE_BODIES: '1', CREATE_BODY_MIN_BYTES_PER_S: '1024', CREATE_BODY_TIMEOUT_MS: '60000'
    })
    // 1 byte every 500 ms: 10 bytes in a 5 s window, where 5120 are needed.
    const slow = await stalled(h, base, 'alice', 500)
    const blocked = await post(base, 'bob', large)
    expect(blocked.status).toBe(503)

    const cut = await within(slow.answer, 9000)
    expect(cut.status).toBe(408)
    expect(cut.headers['content-type']).toMatch(/^application\/problem\+json/)
    expect(cut.headers.connection).toBe('close')
    expect(JSON.parse(cut.body)).toMatchObject({ code: 'REQUEST_TIMEOUT', status: 408 })
    expect(JSON.parse(cut.body).detail).toContain('1024 bytes/s')
    // Not before the first 5 s window has passed (the server's clock starts later than ours), and soon after it.
    expect(cut.at - slow.started).toBeGreaterThanOrEqual(4900)
    expect(cut.at - slow.started).toBeLessThan(8500)

    // The other caller's large create is taken at once, with no wait for the slow socket.
    const next = await post(base, 'bob', large)
    expect(next.status, (await next.clone().text()).slice(0, 300)).toBe(202)
    expect(h.logs.text).toContain('create body cut')
  })

  it('cuts a body not in by CREATE_BODY_TIMEOUT_MS however steadily it comes; the caller may send again', async () => {
    const { h, base } = await listening({
      CALLER_MAX_LARGE_BODIES: '1', CREATE_BODY_MIN_BYTES_PER_S: '0', CREATE_BODY_TIMEOUT_MS: '1500'
    })
    const slow = await stalled(h, base, 'alice', 500)
    expect((await post(base, 'alice', large)).status).toBe(429)

    const cut = await within(slow.answer, 5000)
    expect(cut.status).toBe(408)
    expect(JSON.parse(cut.body)).toMatchObject({ code: 'REQUEST_TIMEOUT' })
    expect(JSON.parse(cut.body).detail).toContain('1500 ms')
    expect(cut.at - slow.started).toBeGreaterThanOrEqual(1400)
    expect(cut.at - slow.started).toBeLessThan(4000)
    expect((await post(base, 'alice', large)).status).toBe(202)
  })
})

describe('SSE streams per caller', () => {
  /** Opens a stream; a 200 is held open (closed by the test or after it), anything else is read whole. */
  interface Opened { status: number, text: string, close: () => void }
  async function open (base: string, who: Who, id: string): Promise<Opened> {
    const controller = new AbortController()
    streams.push(controller)
    const res = await fetch(`${base}/v1/videos/${id}/events`, { headers: auth(who), signal: controller.signal })
    if (res.status !== 200 || res.body === null) return { status: res.status, text: await res.text(), close: () => {} }
    // Read up to the replayed `video.queued`: the stream is open and counted.
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
    let text = ''
    while (!text.includes('event: video.queued')) {
      const { value, done } = await reader.read()
      if (done) break
      text += value
    }
    return { status: 200, text, close: () => controller.abort() }
  }

  it('answers the (N+1)-th stream of a caller 429 before any event; a closed stream frees its place', async () => {
    const { h, base } = await listening({ CALLER_MAX_SSE_STREAMS: '2' })
    const task = await createTask(h)
    const bobs = await createTask(h, {}, 'bob')
    const first = await open(base, 'alice', task.id)
    const second = await open(base, 'alice', task.id)
    expect([first.status, second.status]).toEqual([200, 200])

    const refused = await fetch(`${base}/v1/videos/${task.id}/events`, { headers: auth('alice') })
    expect(refused.status).toBe(429)
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
    const p = await problemOf(refused)
    expect(p).toMatchObject({ code: 'CALLER_LIMIT', limit: 'max_sse_streams', limit_value: 2 })
    expect(JSON.stringify(p)).not.toContain('video.queued')
    // Another caller's streams are its own.
    expect((await open(base, 'bob', bobs.id)).status).toBe(200)

    first.close()
    let third = { status: 0, text: '' }
    expect(await until(async () => { third = await open(base, 'alice', task.id); return third.status === 200 }))
      .toBe(true)
    expect(third.text).toContain('event: video.queued')
    // And the place is taken again: still two at most.
    expect((await open(base, 'alice', task.id)).status).toBe(429)
  })
})
