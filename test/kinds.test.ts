/**
 * image2video and text2video (and multi-image2video at its own path) through the whole pipeline: each kind's field
 * rules, one broken field at a time and all at once; the kind on the task; and the task carried through submit to
 * the simulator on the kind's own path with the kind's body, then to succeeded by callback or by reconciliation.
 * The real app, the run's real redis-server, the simulator over loopback HTTP.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import type { LightMyRequestResponse } from 'fastify'
import type { TaskView } from '../src/domain/task.ts'
import { auth, startHarness, type Harness, harnessPerTest } from './helpers/harness.ts'
import { makeJpeg, makePng } from './helpers/images.ts'
import { waitFor } from './helpers/tasks.ts'

type Body = Record<string, unknown>
interface Problem { code: string, errors?: Array<{ pointer: string, detail: string, location?: string }> }

const URL_A = 'https://images.example.com/a.png'
const URL_B = 'https://images.example.com/b.jpg'
const b64 = (buf: Buffer) => buf.toString('base64')
const GIF = b64(Buffer.concat([Buffer.from('GIF89a'), Buffer.from([0x2c, 0x01, 0x2c, 0x01, 0, 0, 0]),
  Buffer.alloc(64)]))

// Masks stay fields with these rules; the model capability table (test/models.test.ts) says who may send them.
const I2V_ALL = { cfg_scale: true, camera_control: true, image_tail: true, masks: true }
const MASKS_ON = { MODEL_CAPABILITIES: JSON.stringify({ image2video: { '*': I2V_ALL } }) }
const i2v = (over: Body = {}): Body => ({ image: URL_A, prompt: 'the cat turns its head', ...over })
const t2v = (over: Body = {}): Body => ({ prompt: 'a paper boat drifts down a rainy street', ...over })
const without = (body: Body, field: string): Body => { const b = { ...body }; delete b[field]; return b }
const simple = (config: Body) => ({ type: 'simple', config })

async function post (h: Harness, path: string, payload: unknown, headers: Record<string, string> = {}):
Promise<LightMyRequestResponse> {
  const all = { ...auth('alice'), ...headers }
  return await h.app.inject({ method: 'POST', url: `/v1/videos${path}`, headers: all, payload: payload as Body })
}

function pointersOf (res: LightMyRequestResponse): string[] {
  expect(res.statusCode, res.body.slice(0, 500)).toBe(400)
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/)
  const p = res.json<Problem>()
  expect(p.code).toBe('INVALID_REQUEST')
  expect(p.errors?.every(e => e.location === 'body')).toBe(true)
  return [...new Set((p.errors ?? []).map(e => e.pointer))].sort()
}

describe('field rules per kind', () => {
  let h: Harness
  beforeAll(async () => { h = await startHarness({ workers: false, env: MASKS_ON }) })
  afterAll(async () => { await h?.close() })

  it('accepts the valid builders (so each refusal below is the one broken field)', async () => {
    for (const [path, body] of [['/image2video', i2v()], ['/text2video', t2v()]] as const) {
      const res = await post(h, path, body)
      expect(res.statusCode, res.body).toBe(202)
    }
  })

  const image2video: Array<[string, Body, string, RegExp?]> = [
    ['no image', without(i2v(), 'image'), '/image', /is required/],
    ['an http:// image', i2v({ image: 'http://images.example.com/a.png' }), '/image', /https/],
    ['a 299 px wide Base64 image', i2v({ image: b64(makePng(299, 400)) }), '/image', /at least 300 px wide/],
    ['an image of aspect 3:1', i2v({ image: b64(makePng(900, 300)) }), '/image', /aspect ratio/],
    ['GIF bytes as image_tail', i2v({ image_tail: GIF }), '/image_tail', /JPG or PNG/],
    ['an empty prompt', i2v({ prompt: '' }), '/prompt'],
    ['a prompt of 2501 characters', i2v({ prompt: 'p'.repeat(2501) }), '/prompt', /2500/],
    ['a negative_prompt of 2501 characters', i2v({ negative_prompt: 'n'.repeat(2501) }), '/negative_prompt', /2500/],
    ['cfg_scale 1.5', i2v({ cfg_scale: 1.5 }), '/cfg_scale', /<= 1/],
    ['mode "hd"', i2v({ mode: 'hd' }), '/mode', /"std", "pro"/],
    ['duration "7"', i2v({ duration: '7' }), '/duration', /must be one of/],
    ['a model_name not in ALLOWED_MODELS', i2v({ model_name: 'kling-v2-master' }), '/model_name', /kling-v1-6/],
    ['aspect_ratio (not a field of image2video)', i2v({ aspect_ratio: '16:9' }),
      '/aspect_ratio', /not an accepted field/],
    ['image_list (a field of multi-image2video)', i2v({ image_list: [{ image: URL_A }] }),
      '/image_list', /not an accepted field/],
    ['camera_control type "spin"', i2v({ camera_control: { type: 'spin' } }), '/camera_control/type', /must be one of/],
    ['camera_control "simple" without config', i2v({ camera_control: { type: 'simple' } }),
      '/camera_control/config', /required/],
    ['camera_control "simple" on two axes', i2v({ camera_control: simple({ pan: 2, zoom: 3 }) }),
      '/camera_control/config', /exactly one.*got 2/],
    ['camera_control "simple" with no move', i2v({ camera_control: simple({ pan: 0 }) }),
      '/camera_control/config', /got 0/],
    ['a fixed camera move with a config', i2v({ camera_control: { type: 'down_back', config: { pan: 1 } } }),
      '/camera_control/config', /left out/],
    ['a camera axis of 11', i2v({ camera_control: simple({ zoom: 11 }) }), '/camera_control/config/zoom', /<= 10/],
    ['an unknown camera axis', i2v({ camera_control: simple({ dolly: 1 }) }),
      '/camera_control/config/dolly', /not an accepted field/],
    ['sound "loud"', i2v({ sound: 'loud' }), '/sound', /"on", "off"/],
    ['voice_list without sound "on"', i2v({ voice_list: [{ voice_id: 'v1' }] }), '/voice_list', /sound "on"/],
    ['three voices', i2v({ sound: 'on', voice_list: [{ voice_id: 'a' }, { voice_id: 'b' }, { voice_id: 'c' }] }),
      '/voice_list', /more than 2/],
    ['watermark_info.enabled "yes"', i2v({ watermark_info: { enabled: 'yes' } }), '/watermark_info/enabled', /boolean/],
    ['a trajectory of 1 point', i2v({ dynamic_masks: [{ mask: URL_B, trajectories: [{ x: 1, y: 1 }] }] }),
      '/dynamic_masks/0/trajectories', /fewer than 2/],
    ['callback_url', i2v({ callback_url: 'https://mine.example.com/cb' }), '/callback_url', /set by the gateway/],
    ['metadata over 4 KB', i2v({ metadata: { note: 'm'.repeat(4100) } }), '/metadata', /4096 bytes/]
  ]

  it.each(image2video)('image2video refuses %s with exactly that pointer', async (_name, body, pointer, detail) => {
    const res = await post(h, '/image2video', body)
    expect(pointersOf(res)).toEqual([pointer])
    if (detail !== undefined) expect(res.json<Problem>().errors?.map(e => e.detail).join(' | ')).toMatch(detail)
  })

  const text2video: Array<[string, Body, string, RegExp?]> = [
    ['no prompt', without(t2v(), 'prompt'), '/prompt', /is required/],
    ['an empty prompt', t2v({ prompt: '' }), '/prompt'],
    ['a prompt of 2501 characters', t2v({ prompt: 'p'.repeat(2501) }), '/prompt', /2500/],
    ['aspect_ratio "4:3"', t2v({ aspect_ratio: '4:3' }), '/aspect_ratio', /"16:9", "9:16", "1:1"/],
    ['duration 7 (a number)', t2v({ duration: 7 }), '/duration', /must be one of/],
    ['mode "hd"', t2v({ mode: 'hd' }), '/mode', /"std", "pro"/],
    ['cfg_scale -0.1', t2v({ cfg_scale: -0.1 }), '/cfg_scale', />= 0/],
    ['a model_name not in ALLOWED_MODELS', t2v({ model_name: 'kling-v2-6' }), '/model_name', /kling-v1-6/],
    ['an image (not a field of text2video)', t2v({ image: URL_A }), '/image', /not an accepted field/],
    ['a static_mask (not a field of text2video)', t2v({ static_mask: URL_A }), '/static_mask', /not an accepted field/],
    ['camera_control "simple" without config', t2v({ camera_control: { type: 'simple' } }),
      '/camera_control/config', /required/],
    ['a fixed camera move with a config', t2v({ camera_control: { type: 'forward_up', config: { tilt: 1 } } }),
      '/camera_control/config', /left out/],
    ['sound "yes"', t2v({ sound: 'yes' }), '/sound'],
    ['a webhook_url that is not https', t2v({ webhook_url: 'ftp://hooks.example.com/x' }), '/webhook_url', /https/],
    ['a reference of 129 characters', t2v({ reference: 'r'.repeat(129) }), '/reference', /128/]
  ]

  it.each(text2video)('text2video refuses %s with exactly that pointer', async (_name, body, pointer, detail) => {
    const res = await post(h, '/text2video', body)
    expect(pointersOf(res)).toEqual([pointer])
    if (detail !== undefined) expect(res.json<Problem>().errors?.map(e => e.detail).join(' | ')).toMatch(detail)
  })

  it('image2video: image_tail, the masks and camera_control exclude one another, each field named', async () => {
    const all = { image_tail: URL_B, static_mask: URL_B, camera_control: simple({ pan: 1 }) }
    const res = await post(h, '/image2video', i2v(all))
    expect(pointersOf(res)).toEqual(['/camera_control', '/image_tail', '/static_mask'])
    expect(res.json<Problem>().errors?.[0].detail).toMatch(/Kling takes one/)
    // Any one of them alone is fine.
    for (const one of [{ image_tail: URL_B }, { static_mask: URL_B }, { camera_control: simple({ pan: 1 }) }]) {
      expect((await post(h, '/image2video', i2v(one))).statusCode).toBe(202)
    }
  })

  it('image2video: a Base64 mask must match the Base64 image, by aspect ratio and resolution', async () => {
    const image = b64(makePng(900, 600))
    const res = await post(h, '/image2video', i2v({
      image,
      static_mask: b64(makePng(600, 400)),
      dynamic_masks: [{ mask: b64(makePng(900, 600, 0xff)), trajectories: [{ x: 1, y: 1 }, { x: 5, y: 9 }] },
        { mask: b64(makePng(600, 600)), trajectories: [{ x: 1, y: 1 }, { x: 5, y: 9 }] }]
    }))
    expect(pointersOf(res)).toEqual(['/dynamic_masks/1/mask', '/static_mask'])
    const details = res.json<Problem>().errors?.map(e => e.detail).join(' | ')
    expect(details).toMatch(/same resolution as the image/)
    expect(details).toMatch(/same aspect ratio as the image/)
  })

  it('lists every bad field at once: schema errors, image checks and kind rules together', async () => {
    const res = await post(h, '/image2video', {
      image: b64(makePng(200, 200)),
      image_tail: 'http://images.example.com/tail.png',
      prompt: 'p'.repeat(2501),
      mode: 'hd',
      camera_control: simple({ pan: 1 }),
      colour: 'blue'
    }, { 'idempotency-key': 'k'.repeat(256) })
    const p = res.json<Problem>()
    expect(res.statusCode).toBe(400)
    expect([...new Set(p.errors?.map(e => `${e.location ?? ''}:${e.pointer}`))].sort()).toEqual([
      'body:/camera_control', 'body:/colour', 'body:/image', 'body:/image_tail', 'body:/mode', 'body:/prompt',
      'headers:/idempotency-key'
    ])
    const bad = { negative_prompt: 'n'.repeat(2501), aspect_ratio: '2:1', image: URL_A, model_name: 'x' }
    const t = await post(h, '/text2video', bad)
    expect(pointersOf(t)).toEqual(['/aspect_ratio', '/image', '/model_name', '/negative_prompt', '/prompt'])
  })

  it('shows the kind, the defaults, Base64 images as descriptors; /multi-image2video = POST /v1/videos', async () => {
    const png = makePng(640, 360, 0x41)
    const images = { image: `data:image/png;base64,${b64(png)}`, image_tail: b64(makeJpeg(640, 360)) }
    const res = await post(h, '/image2video', i2v(images))
    expect(res.statusCode, res.body).toBe(202)
    const task = res.json<TaskView>()
    expect(task.kind).toBe('image2video')
    expect(task.request).toMatchObject({
      image: { bytes: png.length, width: 640, height: 360, format: 'png' },
      image_tail: { width: 640, height: 360, format: 'jpeg' },
      prompt: 'the cat turns its head',
      model_name: 'kling-v1-6',
      mode: 'std',
      duration: '5'
    })
    expect(res.body).not.toContain(b64(png).slice(0, 64))

    const fields = { aspect_ratio: '9:16', duration: 10, camera_control: { type: 'forward_up' }, sound: 'off' }
    const text = (await post(h, '/text2video', t2v(fields))).json<TaskView>()
    expect(text).toMatchObject({ kind: 'text2video', request: { ...fields, duration: '10' } })

    const multi = { image_list: [{ image: URL_A }, { image: URL_B }], prompt: 'two friends wave' }
    for (const path of ['', '/multi-image2video']) {
      const made = await post(h, path, multi)
      expect(made.statusCode, made.body).toBe(202)
      expect(made.json<TaskView>().kind).toBe('multi-image2video')
    }
    const list = await h.app.inject({ url: '/v1/videos?limit=4', headers: auth('alice') })
    const listed = list.json<{ data: TaskView[] }>().data
    expect(listed.map(t => t.kind)).toEqual(['multi-image2video', 'multi-image2video', 'text2video', 'image2video'])
    const one = await h.app.inject({ url: `/v1/videos/${task.id}`, headers: auth('alice') })
    expect(one.json<TaskView>().kind).toBe('image2video')
  })

  it('an Idempotency-Key replays only the same kind and body', async () => {
    const key = { 'idempotency-key': `kinds-${Date.now()}` }
    const first = await post(h, '/text2video', t2v(), key)
    expect(first.statusCode).toBe(202)
    const again = await post(h, '/text2video', t2v(), key)
    expect(again.headers['idempotent-replayed']).toBe('true')
    expect(again.json<TaskView>().id).toBe(first.json<TaskView>().id)
    expect((await post(h, '/image2video', i2v({ prompt: t2v().prompt }), key)).statusCode).toBe(422)
  })
})

describe('each kind through submit, to the simulator and back', () => {
  const harness = harnessPerTest()

  it('image2video: its path and body upstream, then succeeded by the callback and a query on its path', async () => {
    const sim = { processingAfterMs: 50, finishAfterMs: 150 }
    const h = await harness({ listen: true, sim, env: { RECONCILE_INTERVAL_MS: '60000' } })
    const image = makePng(400, 400)
    const res = await post(h, '/image2video', i2v({
      image: `data:image/png;base64,${b64(image)}`,
      image_tail: URL_B,
      negative_prompt: 'blur',
      cfg_scale: 0.4,
      mode: 'pro',
      sound: 'off',
      watermark_info: { enabled: false },
      webhook_url: 'https://hooks.example.com/kg'
    }))
    expect(res.statusCode, res.body).toBe(202)
    const id = res.json<TaskView>().id
    const done = await waitFor(h, id, t => t.status === 'succeeded')
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded')
    expect(done.kind).toBe('image2video')

    const [up, ...more] = [...h.sim.tasks.values()]
    expect(more).toEqual([])
    expect(up).toMatchObject({ kind: 'image2video', api: 'cometapi', task_id: done.upstream?.task_id })
    expect(up.body).toEqual({
      image: b64(image), // bare Base64, as Kling wants it
      image_tail: URL_B,
      prompt: 'the cat turns its head',
      negative_prompt: 'blur',
      model_name: 'kling-v1-6',
      mode: 'pro',
      duration: '5',
      cfg_scale: 0.4,
      sound: 'off',
      watermark_info: { enabled: false },
      callback_url: up.callback_url,
      external_task_id: up.external_task_id
    })
    // The callback's terminal state was confirmed by a query; the simulator finds a task only on its own kind's path.
    expect(h.sim.counts.callbacks).toBeGreaterThanOrEqual(2)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(1)
  })

  it('text2video: its path upstream, then succeeded by reconciliation alone (no callbacks), on its path', async () => {
    const sim = { processingAfterMs: 30, finishAfterMs: 60 }
    const h = await harness({ sim, env: { RECONCILE_INTERVAL_MS: '200', RECONCILE_AFTER_MS: '0' } })
    h.sim.callbackPolicy.drop = true
    const res = await post(h, '/text2video', t2v({ aspect_ratio: '1:1', camera_control: simple({ zoom: -3 }) }))
    expect(res.statusCode, res.body).toBe(202)
    const id = res.json<TaskView>().id
    const done = await waitFor(h, id, t => t.status === 'succeeded', 10_000)
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded')
    const [up] = [...h.sim.tasks.values()]
    expect(up).toMatchObject({ kind: 'text2video', api: 'cometapi', task_id: done.upstream?.task_id })
    const camera = { type: 'simple', config: { zoom: -3 } }
    expect(up.body).toMatchObject({ prompt: t2v().prompt, aspect_ratio: '1:1', camera_control: camera })
    expect(up.body).not.toHaveProperty('image')
    expect(h.sim.counts.callbacks).toBe(0)
    expect(h.sim.counts.queries).toBeGreaterThanOrEqual(1)
  })

  it('a task upstream refuses for its kind fails with the upstream code and message', async () => {
    const h = await harness({ sim: { auto: false }, env: { ALLOWED_MODELS: 'kling-v1-6,kling-v9' } })
    const res = await post(h, '/text2video', t2v({ model_name: 'kling-v9' }))
    expect(res.statusCode, res.body).toBe(202)
    const done = await waitFor(h, res.json<TaskView>().id, t => t.status === 'failed')
    expect(done.error).toEqual({ code: 'KLING_1201', message: 'model kling-v9 not supported' })
    expect(h.sim.tasks.size).toBe(0)
  })
})
