/**
 * Large creates streamed (issue 15): a body over LARGE_BODY_BYTES is read as it arrives, its images decoded into
 * their parked place (src/services/intake.ts), and the submit job streams them upstream. Against the real app, Redis
 * and simulator: the images reach upstream byte for byte, a bad image anywhere in a large body is refused exactly as
 * in a small one, and no way out (a client gone mid-body, a full parking, a replay) leaves anything parked.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { createHash } from 'node:crypto'
import { connect } from 'node:net'
import { Readable } from 'node:stream'
import fc from 'fast-check'
import { request } from 'undici'
import { auth, startHarness, type Harness } from './helpers/harness.ts'
import { makeJpeg, makePng, noisyPng } from './helpers/images.ts'
import { keys } from '../src/store/keys.ts'
import { TaskStore } from '../src/store/tasks.ts'
import { Base64Intake } from '../src/domain/image-intake.ts'
import { inspectBase64Image } from '../src/domain/images.ts'
import { JsonDivert } from '../src/domain/json-divert.ts'
import { CREATE_SCHEMAS } from '../src/schemas/videos.ts'

const b64 = (buf: Buffer) => buf.toString('base64')
const sha256 = (buf: Buffer) => createHash('sha256').update(buf).digest('hex')
const URL_A = 'https://images.example.com/a.png'
const MB = 1024 * 1024

async function until (check: () => Promise<boolean>, ms = 10_000): Promise<boolean> {
  for (let waited = 0; waited < ms; waited += 50) {
    if (await check()) return true
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return await check()
}

/** The parked-image hashes left under the harness's prefix, and the parked-bytes counter. */
async function leftovers (h: Harness): Promise<{ keys: string[], bytes: number }> {
  const found = await h.redis.keys(`{${h.prefix}}:task:*:parked`)
  return { keys: found, bytes: Number(await h.redis.get(keys(h.prefix).parkedBytes) ?? 0) }
}
const nothingParked = async (h: Harness) => {
  const left = await leftovers(h)
  return left.keys.length === 0 && left.bytes === 0 && await h.redis.zcard(keys(h.prefix).parkedPending) === 0
}

describe('a Base64 image read in pieces', () => {
  const cases: Array<[string, string]> = [
    ['a PNG', b64(noisyPng(320, 300))],
    ['a JPEG as a data: URL', `data:image/jpeg;base64,${b64(makeJpeg(400, 400))}`],
    ['too small', b64(noisyPng(200, 300))],
    ['a bad aspect ratio', b64(noisyPng(1000, 300))],
    ['not an image', b64(Buffer.alloc(90_000, 7))],
    ['a character Base64 lacks halfway', (s => s.slice(0, 5000) + '*' + s.slice(5001))(b64(noisyPng(300)))],
    ['padding inside', (s => s.slice(0, 4000) + '==' + s.slice(4000))(b64(noisyPng(300)))],
    ['a length Base64 cannot have', b64(noisyPng(300)).slice(0, -1).replace(/=+$/, '') + 'A'],
    ['a malformed data: header', `data:image/png,${b64(makePng(300, 300))}`],
    ['over 10 MB', b64(Buffer.concat([makePng(300, 300), Buffer.alloc(10 * MB)]))],
    ['over 10 MB, not an image', b64(Buffer.alloc(10 * MB + 10, 1))]
  ]
  it.each(cases)('gives the verdict the whole string gets, however it is cut: %s', (_, text) => {
    const whole = inspectBase64Image(text)
    const expected = whole.ok ? { ok: true, descriptor: whole.descriptor } : whole
    fc.assert(fc.property(fc.array(fc.integer({ min: 1, max: text.length }), { maxLength: 6 }), cuts => {
      const at = [0, ...cuts.sort((a, b) => a - b), text.length]
      const intake = new Base64Intake()
      const parts: Buffer[] = []
      for (let i = 1; i < at.length; i++) parts.push(...intake.write(text.slice(at[i - 1], at[i])))
      const end = intake.end()
      parts.push(...end.parts)
      expect(end.verdict).toEqual(expected)
      if (whole.ok) {
        // Every part but the last is a multiple of 3 bytes: their Base64 strings join into the image's.
        expect(parts.slice(0, -1).every(p => p.length % 3 === 0)).toBe(true)
        expect(Buffer.concat(parts).equals(whole.data)).toBe(true)
      } else {
        // What was parked before the problem showed is freed with the request; nothing more is handed out.
        expect(end.parts.length).toBe(0)
      }
    }), { numRuns: 15 })
  })
})

describe('a body split around its long image strings', () => {
  it('keeps everything but the images, each diverted whole to its pointer, however the body is cut', () => {
    const image = b64(noisyPng(300))
    const body = Buffer.from(JSON.stringify({
      prompt: 'a "quoted" prompt \\ with a backslash, and an image-like {"image":"x"} in it',
      image_list: [{ image: image.replace(/\//g, '\\/') }, { image: URL_A }, { image }],
      // Brackets and escaped quotes inside strings where no image can be (skipped by indexOf there).
      metadata: { note: 'a ] } [ { \\" ", "image_list": [', image_list: [{ image }], after: ['[', '"]"'] }
    }).replace(/\\\\\//g, '\\/'))
    fc.assert(fc.property(fc.array(fc.integer({ min: 1, max: body.length - 1 }), { maxLength: 8 }), cuts => {
      const seen: Array<{ pointer: string, raw: Buffer[] }> = []
      const divert = new JsonDivert(CREATE_SCHEMAS['multi-image2video'] as never, 1024, pointer => {
        const one = { pointer, raw: [] as Buffer[] }
        seen.push(one)
        return { write: raw => { one.raw.push(Buffer.from(raw)) }, end: () => `#${seen.length}` }
      })
      const at = [0, ...cuts.sort((a, b) => a - b), body.length]
      for (let i = 1; i < at.length; i++) divert.write(body.subarray(at[i - 1], at[i]))
      const skeleton = JSON.parse(divert.end())
      expect(skeleton.image_list).toEqual([{ image: '#1' }, { image: URL_A }, { image: '#2' }])
      // Where the schema has no image (metadata), a long string stays as it is.
      expect(skeleton.metadata.image_list[0].image).toBe(image)
      expect(seen.map(s => s.pointer)).toEqual(['/image_list/0/image', '/image_list/2/image'])
      expect(JSON.parse(`"${Buffer.concat(seen[0].raw).toString()}"`)).toBe(image)
      expect(Buffer.concat(seen[1].raw).toString()).toBe(image)
    }), { numRuns: 30 })
  })
})

describe('large creates, streamed', () => {
  let h: Harness
  /** The same app reading every body whole (LARGE_BODY_BYTES above them all): what a small body gets. */
  let whole: Harness
  beforeAll(async () => {
    h = await startHarness({ listen: true, env: { CALLER_MAX_LARGE_BODIES: '0' } })
    whole = await startHarness({ workers: false, env: { LARGE_BODY_BYTES: String(100 * MB) } })
  })
  afterAll(async () => {
    await whole?.close()
    await h?.close()
  })

  const post = async (app: Harness, body: unknown, headers: Record<string, string> = {}) =>
    await app.app.inject({
      method: 'POST',
      url: '/v1/videos',
      headers: { ...auth('alice'), 'content-type': 'application/json', ...headers },
      payload: typeof body === 'string' ? body : JSON.stringify(body)
    })

  it('accepts 4 × ~8 MB over HTTP, parks them in parts, and sends them upstream byte for byte', async () => {
    const pngs = Array.from({ length: 4 }, () => noisyPng(1650))
    const body = JSON.stringify({ image_list: pngs.map(png => ({ image: b64(png) })), prompt: 'four large images' })
    expect(body.length).toBeGreaterThan(40 * MB)
    const res = await request(`${h.config.publicBaseUrl}/v1/videos`, {
      method: 'POST', body, headers: { ...auth('alice'), 'content-type': 'application/json' }
    })
    const answer = await res.body.json() as { id: string, request: { image_list: Array<{ image: unknown }> } }
    expect(res.statusCode, JSON.stringify(answer)).toBe(202)
    expect(answer.request.image_list.map(i => i.image)).toEqual(pngs.map(png => ({
      sha256: sha256(png), bytes: png.length, width: 1650, height: 1650, format: 'png'
    })))
    expect(await until(async () => h.sim.createLog.some(c => c.taskId !== null))).toBe(true)
    const sent = h.sim.createLog.find(c => c.taskId !== null)
    expect(sent?.imageSha256).toEqual(pngs.map(sha256))
    expect(sent?.prompt).toBe('four large images')
    // Upstream has it: nothing stays parked, and the counter is back to 0.
    expect(await until(async () => await nothingParked(h))).toBe(true)
  })

  it('streams the image of another kind (image2video) by its own schema, to its own upstream path', async () => {
    const png = noisyPng(1400)
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/videos/image2video',
      headers: { ...auth('alice'), 'content-type': 'application/json' },
      payload: JSON.stringify({ image: b64(png), prompt: 'one large image, image2video' })
    })
    expect(res.statusCode, res.body.slice(0, 300)).toBe(202)
    expect(await until(async () => h.sim.createLog.some(c => c.prompt === 'one large image, image2video' &&
      c.taskId !== null))).toBe(true)
    const sent = h.sim.createLog.find(c => c.prompt === 'one large image, image2video' && c.taskId !== null)
    expect(sent?.imageSha256).toEqual([sha256(png)])
    expect(await until(async () => await nothingParked(h))).toBe(true)
  })

  it('parks a streamed image as parts, counted exactly, that read back whole', async () => {
    const png = noisyPng(700)
    const small = makePng(300, 300)
    // Without workers the parts stay where the body put them.
    const quiet = await startHarness({ workers: false, env: { LARGE_BODY_BYTES: '1024' } })
    try {
      const created = await post(quiet, {
        image_list: [{ image: b64(png) }, { image: b64(small) }], prompt: 'one streamed, one small'
      })
      expect(created.statusCode, created.body).toBe(202)
      const id = created.json().id as string
      const fields = await quiet.redis.hkeys(keys(quiet.prefix).parked(id))
      expect(fields.filter(f => f.startsWith('/image_list/0/image#')).length).toBe(Math.ceil(png.length / (768 * 1024)))
      expect(fields).toContain('/image_list/1/image')
      const parked = await new TaskStore(quiet.redis, quiet.prefix).parked(id)
      expect(parked.get('/image_list/0/image')?.equals(png)).toBe(true)
      expect(parked.get('/image_list/1/image')?.equals(small)).toBe(true)
      expect(Number(await quiet.redis.get(keys(quiet.prefix).parkedBytes))).toBe(png.length + small.length)
    } finally {
      await quiet.close()
    }
  })

  it('refuses a bad image in the middle of a large body exactly as in a small one', async () => {
    const good = b64(noisyPng(1200))
    const bodies: Array<Record<string, unknown>> = [
      { image_list: [{ image: good }, { image: b64(noisyPng(200, 320)) }, { image: good }], prompt: 'too small' },
      { image_list: [{ image: good }, { image: good.slice(0, 9000) + '!' + good.slice(9001) }], prompt: 'p' },
      { image_list: [{ image: good }, { image: b64(Buffer.alloc(11 * MB, 3)) }], prompt: 'p' },
      { image_list: [{ image: good }, { image: `data:image/png,${good}` }], prompt: '' },
      { image_list: [{ image: good }, { image: URL_A }], prompt: 'p', surplus: true },
      { image_list: [{ image: good }, { image: good }], prompt: 'p', static_mask: b64(noisyPng(300)) },
      // A URL as long as an image: named as a URL, not as bad Base64.
      { image_list: [{ image: `https://images.example.com/${'a'.repeat(100_000)}` }, { image: good }], prompt: 'p' },
      { image_list: [{ image: `http://images.example.com/${'a'.repeat(100_000)}` }, { image: good }], prompt: 'p' }
    ]
    for (const body of bodies) {
      const streamed = await post(h, body)
      const read = await post(whole, body)
      expect(read.statusCode, read.body).toBe(400)
      expect(streamed.statusCode).toBe(400)
      expect(streamed.json()).toEqual(read.json())
    }
    // A lone surrogate and raw JSON escapes inside a large image string: named as a small body names them.
    const surrogate = JSON.stringify({ image_list: [{ image: good }, { image: URL_A }], prompt: 'p' })
      .replace(good, good.slice(0, 70_000) + '\\ud800' + good.slice(70_000))
    const both = [await post(h, surrogate), await post(whole, surrogate)]
    expect(both[1].statusCode, both[1].body).toBe(400)
    expect(both[0].json()).toEqual(both[1].json())
    // Not JSON inside a large image string (a raw control character, a bad escape): INVALID_JSON too, without the
    // position a small body's detail gives (docs/API.md, "Changes to the contract" 39).
    for (const bad of ['\n', '\t', '\\x']) {
      const text = JSON.stringify({ image_list: [{ image: good }, { image: URL_A }], prompt: 'p' })
        .replace(good, good.slice(0, 300_001) + bad + good.slice(300_001))
      const [streamed, read] = [await post(h, text), await post(whole, text)]
      expect(read.json()).toMatchObject({ status: 400, code: 'INVALID_JSON' })
      expect(streamed.json()).toMatchObject({
        status: 400,
        code: 'INVALID_JSON',
        detail: 'the body is not valid JSON: it has a character JSON does not allow; send one JSON object'
      })
    }
    expect(await until(async () => await nothingParked(h))).toBe(true)
  })

  it('takes a large body with no long image (whitespace, small images) and parks exactly what it holds', async () => {
    const quiet = await startHarness({ workers: false })
    try {
      const small = makePng(300, 300)
      const padded = (images: unknown[]) => JSON.stringify({ image_list: images, prompt: 'p' }).replace(':', ':' +
        ' '.repeat(2 * MB))
      const urls = await post(quiet, padded([{ image: URL_A }, { image: URL_A }]))
      expect(urls.statusCode, urls.body).toBe(202)
      expect(await nothingParked(quiet)).toBe(true)
      const images = await post(quiet, padded([{ image: b64(small) }, { image: URL_A }]))
      expect(images.statusCode, images.body).toBe(202)
      expect(Number(await quiet.redis.get(keys(quiet.prefix).parkedBytes))).toBe(small.length)
      const parked = await new TaskStore(quiet.redis, quiet.prefix).parked(images.json().id as string)
      expect(parked.get('/image_list/0/image')?.equals(small)).toBe(true)
    } finally {
      await quiet.close()
    }
  })

  it('streams a body sent without a Content-Length (chunked), and refuses one once it passes the limit', async () => {
    const png = noisyPng(900)
    const text = Buffer.from(JSON.stringify({ image_list: [{ image: b64(png) }, { image: URL_A }], prompt: 'chunked' }))
    async function * chunked (body: Buffer) {
      for (let at = 0; at < body.length; at += 100_000) yield body.subarray(at, at + 100_000)
    }
    const send = async (origin: string, body: Buffer) => await request(`${origin}/v1/videos`, {
      method: 'POST',
      body: Readable.from(chunked(body)),
      headers: { ...auth('alice'), 'content-type': 'application/json' }
    })
    const res = await send(h.config.publicBaseUrl as string, text)
    const answer = await res.body.json() as { request: { image_list: Array<{ image: { sha256: string } }> } }
    expect(res.statusCode, JSON.stringify(answer)).toBe(202)
    expect(answer.request.image_list[0].image.sha256).toBe(sha256(png))
    const capped = await startHarness({ workers: false, listen: true, env: { CREATE_BODY_LIMIT_BYTES: String(MB) } })
    try {
      const refused = await send(capped.config.publicBaseUrl as string, text).catch((err: Error) => err)
      // 413, or the socket closed under the rest of the body: either way nothing is parked.
      if (!(refused instanceof Error)) {
        expect(refused.statusCode).toBe(413)
        await refused.body.dump()
      }
      expect(await until(async () => await nothingParked(capped))).toBe(true)
    } finally {
      await capped.close()
    }
  })

  it('takes escaped slashes in a large image as JSON does', async () => {
    const png = noisyPng(900)
    const body = JSON.stringify({ image_list: [{ image: b64(png) }, { image: URL_A }], prompt: 'escaped' })
      .replace(/\//g, '\\/')
    const res = await post(h, body)
    expect(res.statusCode, res.body).toBe(202)
    expect(res.json().request.image_list[0].image.sha256).toBe(sha256(png))
  })

  it('leaves nothing parked when the client goes away mid-body', async () => {
    const image = b64(noisyPng(1800))
    const body = Buffer.from(JSON.stringify({ image_list: [{ image }, { image: URL_A }], prompt: 'p' }))
    const { port } = new URL(h.config.publicBaseUrl as string)
    const socket = connect(Number(port), '127.0.0.1')
    await new Promise<void>(resolve => socket.once('connect', resolve))
    socket.on('error', () => {})
    socket.write(`POST /v1/videos HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: ${auth('alice').authorization}\r\n` +
      `content-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n`)
    socket.write(body.subarray(0, Math.floor(body.length / 2)))
    // Parts are being parked as the body comes...
    expect(await until(async () => (await leftovers(h)).keys.length > 0)).toBe(true)
    socket.destroy()
    // ...and once it is cut, every one of them is freed, with its share of the counter.
    expect(await until(async () => await nothingParked(h))).toBe(true)
  })

  it('answers 503 before parking past PARKED_MAX_BYTES, and a replay parks nothing for good', async () => {
    const body = { image_list: [{ image: b64(noisyPng(800)) }, { image: URL_A }], prompt: 'replayed' }
    const full = await startHarness({
      workers: false, env: { PARKED_MAX_BYTES: String(MB), CALLER_MAX_LARGE_BODIES: '0' }
    })
    try {
      const refused = await post(full, body)
      expect(refused.statusCode, refused.body).toBe(503)
      expect(refused.headers['retry-after']).toBe('30')
      expect(await until(async () => await nothingParked(full))).toBe(true)
    } finally {
      await full.close()
    }
    const first = await post(h, body, { 'idempotency-key': 'k-large' })
    expect(first.statusCode).toBe(202)
    const again = await post(h, body, { 'idempotency-key': 'k-large' })
    expect(again.statusCode).toBe(202)
    expect(again.headers['idempotent-replayed']).toBe('true')
    expect(again.json().id).toBe(first.json().id)
    // The replay's own parking is freed, the first one's once upstream has its task.
    expect(await until(async () => await nothingParked(h))).toBe(true)
  })

  it('refuses a large body over its limit by its Content-Length, before parking any of it', async () => {
    const capped = await startHarness({
      workers: false, env: { CREATE_BODY_LIMIT_BYTES: String(2 * MB), LARGE_BODY_BYTES: '1024' }
    })
    try {
      const big = JSON.stringify({ image_list: [{ image: b64(noisyPng(1000)) }, { image: URL_A }], prompt: 'p' })
      const res = await post(capped, big)
      expect(res.statusCode).toBe(413)
      expect(await until(async () => await nothingParked(capped))).toBe(true)
    } finally {
      await capped.close()
    }
  })
})
