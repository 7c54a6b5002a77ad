/**
 * POST /v1/videos field rules (docs/API.md, "POST /v1/videos"), one broken field at a time, against the real app,
 * Redis and simulator.
 * Workers are off: nothing here needs a task to go upstream.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { createHash } from 'node:crypto'
import type { LightMyRequestResponse } from 'fastify'
import { auth, startHarness, type Harness } from './helpers/harness.ts'
import { makeJpeg, makePng } from './helpers/images.ts'

type Body = Record<string, unknown>
interface Problem {
  status: number, code: string, detail: string, errors?: Array<{ pointer: string, detail: string, location?: string }>
}

const URL_A = 'https://images.example.com/a.png'
const URL_B = 'https://images.example.com/b.jpg'
const b64 = (buf: Buffer) => buf.toString('base64')
const sha256 = (buf: Buffer) => createHash('sha256').update(buf).digest('hex')

// Masks stay fields with these rules; the model capability table (test/models.test.ts) says who may send them.
const MASKS_ON = {
  MODEL_CAPABILITIES: JSON.stringify({ 'multi-image2video': { 'kling-v1-6': { cfg_scale: true, masks: true } } })
}

/** A body every rule accepts; each test breaks exactly one field of it. */
function validBody (): Body {
  return { image_list: [{ image: URL_A }, { image: URL_B }], prompt: 'a grey cat walks slowly across a sunny room' }
}
const imageAt = (i: number, image: string) => (b: Body) => { (b.image_list as Body[])[i] = { image } }
const set = (field: string, value: unknown) => (b: Body) => { b[field] = value }
const drop = (field: string) => (b: Body) => { delete b[field] }
const points = (n: number) => Array.from({ length: n }, (_, i) => ({ x: i, y: i * 2 }))
const group = (trajectories: unknown) => ({ mask: URL_A, trajectories })

/** ~10 MB + 1 byte that start like a PNG: the size alone must refuse it. */
function oversizedPng (): Buffer {
  const buf = Buffer.alloc(10 * 1024 * 1024 + 1)
  makePng(300, 300).copy(buf)
  return buf
}

describe('POST /v1/videos field rules', () => {
  let h: Harness
  beforeAll(async () => { h = await startHarness({ workers: false, env: MASKS_ON }) })
  afterAll(async () => { await h?.close() })

  const create = async (body: unknown, headers: Record<string, string> = auth('alice')) =>
    await h.app.inject({ method: 'POST', url: '/v1/videos', headers, payload: body as Body })

  function problemOf (res: LightMyRequestResponse): Problem {
    expect(res.statusCode, res.body.slice(0, 500)).toBe(400)
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/)
    const p = res.json<Problem>()
    expect(p).toMatchObject({
      status: 400, code: 'INVALID_REQUEST', title: 'Bad Request', type: 'urn:kling-gateway:problem:invalid_request'
    })
    return p
  }
  const pointersOf = (p: Problem) => [...new Set((p.errors ?? []).map(e => e.pointer))].sort()

  it('accepts the valid builder as it is (so each refusal below is the one broken field)', async () => {
    const res = await create(validBody())
    expect(res.statusCode).toBe(202)
    expect(res.json())
      .toMatchObject({ status: 'queued', request: { model_name: 'kling-v1-6', mode: 'std', duration: '5' } })
  })

  const refused: Array<[string, (b: Body) => void, string, RegExp?]> = [
    ['image_list with 1 item', b => { b.image_list = [{ image: URL_A }] }, '/image_list', /fewer than 2/],
    [
      'image_list with 5 items', b => { b.image_list = Array.from({ length: 5 }, () => ({ image: URL_A })) },
      '/image_list', /more than 4/
    ],
    ['an http:// image URL', imageAt(1, 'http://images.example.com/b.jpg'), '/image_list/1/image', /https/],
    ['non-Base64 garbage as an image', imageAt(0, 'this is *not* base64 at all!'), '/image_list/0/image', /Base64/],
    [
      'GIF bytes as an image',
      imageAt(0, b64(Buffer.concat([
        Buffer.from('GIF89a'), Buffer.from([0x2c, 0x01, 0x2c, 0x01, 0, 0, 0]), Buffer.alloc(64)
      ]))),
      '/image_list/0/image', /JPG or PNG/
    ],
    [
      'a 299 px wide image', imageAt(0, b64(makePng(299, 400))), '/image_list/0/image',
      /at least 300 px wide \(got 299\)/
    ],
    [
      'a 299 px tall JPEG', imageAt(1, b64(makeJpeg(400, 299))), '/image_list/1/image',
      /at least 300 px tall \(got 299\)/
    ],
    ['an image of aspect 3:1', imageAt(0, b64(makePng(900, 300))), '/image_list/0/image', /aspect ratio/],
    ['an image of aspect 1:3', imageAt(1, b64(makePng(300, 900))), '/image_list/1/image', /aspect ratio/],
    ['a missing prompt', drop('prompt'), '/prompt', /is required/],
    ['an empty prompt', set('prompt', ''), '/prompt'],
    ['a prompt of 501 characters', set('prompt', 'p'.repeat(501)), '/prompt', /500/],
    ['a negative_prompt of 201 characters', set('negative_prompt', 'n'.repeat(201)), '/negative_prompt', /200/],
    ['a model_name not in ALLOWED_MODELS', set('model_name', 'kling-v2-master'), '/model_name', /kling-v1-6/],
    ['mode "hd"', set('mode', 'hd'), '/mode', /"std", "pro"/],
    ['duration "7"', set('duration', '7'), '/duration', /must be one of/],
    ['duration 7 (a number)', set('duration', 7), '/duration', /must be one of/],
    ['aspect_ratio "4:3"', set('aspect_ratio', '4:3'), '/aspect_ratio', /"16:9", "9:16", "1:1"/],
    ['cfg_scale 1.5', set('cfg_scale', 1.5), '/cfg_scale', /<= 1/],
    ['cfg_scale -0.1', set('cfg_scale', -0.1), '/cfg_scale', />= 0/],
    [
      '7 dynamic_masks groups', set('dynamic_masks', Array.from({ length: 7 }, () => group(points(2)))),
      '/dynamic_masks', /more than 6/
    ],
    [
      'a trajectory of 1 point', set('dynamic_masks', [group(points(1))]),
      '/dynamic_masks/0/trajectories', /fewer than 2/
    ],
    [
      'a trajectory of 78 points', set('dynamic_masks', [group(points(2)), group(points(78))]),
      '/dynamic_masks/1/trajectories', /more than 77/
    ],
    [
      'a non-integer trajectory point', set('dynamic_masks', [group([{ x: 1, y: 2 }, { x: 3.5, y: 4 }])]),
      '/dynamic_masks/0/trajectories/1/x', /integer/
    ],
    ['a reference of 129 characters', set('reference', 'r'.repeat(129)), '/reference', /128/],
    ['a webhook_url that is not a URL', set('webhook_url', 'not a url'), '/webhook_url'],
    ['metadata over 4 KB of JSON', set('metadata', { note: 'm'.repeat(4100) }), '/metadata', /4096 bytes/],
    ['an unknown field', set('colour', 'blue'), '/colour', /^is not an accepted field$/]
  ]

  it.each(refused)('refuses %s with exactly that pointer', async (_name, breakIt, pointer, detail) => {
    const body = validBody()
    breakIt(body)
    const p = problemOf(await create(body))
    expect(pointersOf(p)).toEqual([pointer])
    expect(p.errors?.every(e => e.location === 'body')).toBe(true)
    if (detail !== undefined) expect(p.errors?.map(e => e.detail).join(' | ')).toMatch(detail)
  })

  it('refuses callback_url and external_task_id with a detail saying the gateway sets them', async () => {
    for (const field of ['callback_url', 'external_task_id']) {
      const p = problemOf(await create({ ...validBody(), [field]: 'https://mine.example.com/x' }))
      expect(pointersOf(p)).toEqual([`/${field}`])
      expect(p.errors?.[0].detail).toMatch(/set by the gateway/)
      expect(p.errors?.[0].detail).not.toBe('is not an accepted field')
    }
  })

  it('refuses an image over 10 MB decoded by its size, at its own pointer', async () => {
    const body = validBody()
    imageAt(1, b64(oversizedPng()))(body)
    const p = problemOf(await create(body))
    expect(pointersOf(p)).toEqual(['/image_list/1/image'])
    expect(p.errors?.[0].detail).toMatch(/10 MB/)
  })

  it('refuses a Base64 static_mask whose resolution differs from the Base64 first image', async () => {
    const body = validBody()
    imageAt(0, b64(makePng(900, 600)))(body)
    body.static_mask = b64(makePng(600, 400)) // same 3:2 aspect, a smaller resolution
    const p = problemOf(await create(body))
    expect(pointersOf(p)).toEqual(['/static_mask'])
    expect(p.errors?.[0].detail).toMatch(/same resolution/)

    // The same mask at the image's own resolution is fine.
    body.static_mask = b64(makePng(900, 600, 0xff))
    expect((await create(body)).statusCode).toBe(202)
  })

  it('accepts the boundaries: aspect 2.5:1 and 1:2.5, a 500-character prompt, 200-character negative_prompt, ' +
    'cfg_scale 0 and 1, 77 points, 6 groups, 128-character reference', async () => {
    const accepted: Array<(b: Body) => void> = [
      imageAt(0, b64(makePng(750, 300))),
      imageAt(1, b64(makeJpeg(300, 750))),
      set('prompt', 'p'.repeat(500)),
      set('negative_prompt', 'n'.repeat(200)),
      set('cfg_scale', 0),
      set('cfg_scale', 1),
      set('dynamic_masks', Array.from({ length: 6 }, () => group(points(77)))),
      set('reference', 'r'.repeat(128)),
      set('metadata', { note: 'm'.repeat(4000) })
    ]
    for (const accept of accepted) {
      const body = validBody()
      accept(body)
      const res = await create(body)
      expect(res.statusCode, `${JSON.stringify(body).slice(0, 200)} → ${res.body.slice(0, 300)}`).toBe(202)
    }
  })

  it('strips a data: prefix instead of refusing it, and stores the image by its descriptor', async () => {
    const png = makePng(640, 360, 0x41)
    const jpeg = makeJpeg(400, 400)
    const body = {
      ...validBody(),
      image_list: [{ image: `data:image/png;base64,${b64(png)}` }, { image: `data:image/jpeg;base64,${b64(jpeg)}` }]
    }
    const res = await create(body)
    expect(res.statusCode, res.body).toBe(202)
    expect(res.json().request.image_list).toEqual([
      { image: { sha256: sha256(png), bytes: png.length, width: 640, height: 360, format: 'png' } },
      { image: { sha256: sha256(jpeg), bytes: jpeg.length, width: 400, height: 400, format: 'jpeg' } }
    ])
  })

  it('accepts duration as the numbers 5 and 10 and stores them as the strings "5" and "10"', async () => {
    for (const [given, stored] of [[5, '5'], [10, '10'], ['10', '10']] as const) {
      const res = await create({ ...validBody(), duration: given })
      expect(res.statusCode).toBe(202)
      expect(res.json().request.duration).toBe(stored)
      const got = await h.app.inject({ url: `/v1/videos/${res.json().id as string}`, headers: auth('alice') })
      expect(got.json().request.duration).toBe(stored)
    }
  })

  it('lists every bad field in one answer: schema problems and a bad Base64 image together', async () => {
    const body = {
      image_list: [{ image: URL_A }, { image: b64(makePng(200, 200)) }, { image: 'http://plain.example.com/c.png' }],
      prompt: '',
      mode: 'hd',
      duration: '7',
      cfg_scale: 3,
      negative_prompt: 'n'.repeat(201),
      dynamic_masks: [group(points(1))],
      external_task_id: 'mine',
      surprise: true
    }
    const p = problemOf(await create(body))
    expect(pointersOf(p)).toEqual([
      '/cfg_scale', '/duration', '/dynamic_masks/0/trajectories', '/external_task_id',
      '/image_list/1/image', '/image_list/2/image',
      '/mode', '/negative_prompt', '/prompt', '/surprise'
    ])
    expect(p.detail).toMatch(/^\d+ invalid fields$/)
    const at = (pointer: string) => p.errors?.filter(e => e.pointer === pointer).map(e => e.detail).join(' | ')
    expect(at('/image_list/1/image')).toMatch(/300 px wide.*\|.*300 px tall/)
    expect(at('/image_list/2/image')).toMatch(/https/)
  })

  it('refuses a body that is not a JSON object, and malformed JSON, as problem+json', async () => {
    for (const payload of ['[]', '"text"', '{"prompt":']) {
      const res = await h.app.inject({
        method: 'POST', url: '/v1/videos', headers: { ...auth('alice'), 'content-type': 'application/json' }, payload
      })
      expect(res.statusCode).toBe(400)
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/)
    }
  })

  it('stores nothing for a refused create', async () => {
    const before = await h.app.inject({ url: '/v1/videos?limit=100', headers: auth('bob') })
    const body = validBody()
    body.prompt = ''
    problemOf(await create(body, auth('bob')))
    const after = await h.app.inject({ url: '/v1/videos?limit=100', headers: auth('bob') })
    expect(after.json().data).toHaveLength(before.json().data.length)
  })
})
