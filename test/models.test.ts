/**
 * Masks by model (docs/API.md, "Models"): the model capability table says which models make each kind, in which
 * modes and durations, and with which of cfg_scale, the masks, camera_control and image_tail; a create that asks for
 * more is 400 naming each field and why, listed with every other problem. MODEL_CAPABILITIES overrides it (each bad
 * entry named at start), ALLOWED_MODELS still restricts. The real app, the run's redis-server, the simulator over
 * loopback HTTP (which refuses masks on multi-image2video, as Kling does).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import type { LightMyRequestResponse } from 'fastify'
import { ConfigError, loadConfig } from '../src/config/index.ts'
import { DEFAULT_MODEL_TABLE } from '../src/domain/models.ts'
import type { TaskView } from '../src/domain/task.ts'
import { auth, startHarness, type Harness, harnessPerTest } from './helpers/harness.ts'
import { makePng } from './helpers/images.ts'
import { waitFor } from './helpers/tasks.ts'

type Body = Record<string, unknown>
interface Problem { code: string, errors?: Array<{ pointer: string, detail: string, location?: string }> }

const URL_A = 'https://images.example.com/a.png'
const URL_B = 'https://images.example.com/b.jpg'
const MASKS = { static_mask: URL_B, dynamic_masks: [{ mask: URL_B, trajectories: [{ x: 1, y: 1 }, { x: 9, y: 9 }] }] }
const multi = (over: Body = {}): Body => ({ image_list: [{ image: URL_A }, { image: URL_B }], prompt: 'wave', ...over })
const i2v = (over: Body = {}): Body => ({ image: URL_A, prompt: 'the cat turns its head', ...over })
const t2v = (over: Body = {}): Body => ({ prompt: 'a paper boat on a rainy street', ...over })

async function post (h: Harness, path: string, payload: Body): Promise<LightMyRequestResponse> {
  return await h.app.inject({ method: 'POST', url: `/v1/videos${path}`, headers: auth('alice'), payload })
}

/** The problems of a 400, by pointer (each pointer's details joined). */
function problemsOf (res: LightMyRequestResponse): Record<string, string> {
  expect(res.statusCode, res.body.slice(0, 500)).toBe(400)
  const p = res.json<Problem>()
  expect(p.code).toBe('INVALID_REQUEST')
  const out: Record<string, string> = {}
  for (const e of p.errors ?? []) out[e.pointer] = [out[e.pointer], e.detail].filter(Boolean).join(' | ')
  return out
}

describe('the default table', () => {
  let h: Harness
  beforeAll(async () => {
    h = await startHarness({ workers: false, env: { ALLOWED_MODELS: 'kling-v1-6,kling-v1,kling-v1-5,kling-v2-6' } })
  })
  afterAll(async () => { await h?.close() })

  it('refuses masks on multi-image2video, naming each field and the reason, on both of its routes', async () => {
    for (const path of ['', '/multi-image2video']) {
      const p = problemsOf(await post(h, path, multi(MASKS)))
      expect(Object.keys(p).sort()).toEqual(['/dynamic_masks', '/static_mask'])
      for (const detail of Object.values(p)) {
        expect(detail).toMatch(/masks \(static_mask, dynamic_masks\) is not supported by kling-v1-6 on multi-image2/)
        expect(detail).toMatch(/CometAPI says not to send them/)
      }
    }
    // Without them the same body is taken; the fields are still validated as before (a bad one is named as such).
    expect((await post(h, '', multi())).statusCode).toBe(202)
    const short = { dynamic_masks: [{ mask: URL_B, trajectories: [{ x: 1, y: 1 }] }] }
    const bad = problemsOf(await post(h, '', multi(short)))
    expect(bad['/dynamic_masks/0/trajectories']).toMatch(/fewer than 2/)
    expect(bad['/dynamic_masks']).toMatch(/not supported/)
  })

  it('lists the model problems with every other problem in one 400', async () => {
    const p = problemsOf(await post(h, '', multi({
      ...MASKS, prompt: '', mode: 'hd', image_list: [{ image: 'http://images.example.com/a.png' }, { image: URL_B }]
    })))
    expect(Object.keys(p).sort()).toEqual(['/dynamic_masks', '/image_list/0/image', '/mode', '/prompt', '/static_mask'])
    // A field the schema refuses is named once, by the schema.
    expect(p['/mode']).not.toMatch(/made only/)
  })

  it('multi-image2video is kling-v1-6 only, even for a model ALLOWED_MODELS lets through', async () => {
    const p = problemsOf(await post(h, '', multi({ model_name: 'kling-v2-6' })))
    const only = /kling-v2-6 does not make multi-image2video \(models for multi-image2video: kling-v1-6;/
    expect(p).toEqual({ '/model_name': expect.stringMatching(only) })
    // kling-v2-6 on the kinds that have it.
    expect((await post(h, '/text2video', t2v({ model_name: 'kling-v2-6' }))).statusCode).toBe(202)
    expect((await post(h, '/image2video', i2v({ model_name: 'kling-v2-6' }))).statusCode).toBe(202)
  })

  it('image2video: masks only with kling-v1 (5 s) and kling-v1-5 (pro, 5 s), as Kling\'s motion brush', async () => {
    const brush = [['kling-v1', {}], ['kling-v1', { mode: 'pro' }], ['kling-v1-5', { mode: 'pro' }]] as const
    for (const [model, extra] of brush) {
      const res = await post(h, '/image2video', i2v({ model_name: model, ...extra, static_mask: URL_B }))
      expect(res.statusCode, `${model} ${JSON.stringify(extra)}: ${res.body}`).toBe(202)
    }
    const later = problemsOf(await post(h, '/image2video', i2v({ ...MASKS })))
    expect(Object.keys(later).sort()).toEqual(['/dynamic_masks', '/static_mask'])
    expect(later['/static_mask']).toMatch(/not supported by kling-v1-6 on image2video \(Kling's motion brush/)
    const ten = i2v({ model_name: 'kling-v1', duration: '10', ...MASKS })
    const tenSeconds = problemsOf(await post(h, '/image2video', ten))
    expect(Object.keys(tenSeconds).sort()).toEqual(['/dynamic_masks', '/static_mask'])
    expect(tenSeconds['/static_mask']).toMatch(/only in mode std or pro, 5 s \(this request: std, 10 s\)/)
    const std = problemsOf(await post(h, '/image2video', i2v({ model_name: 'kling-v1-5', static_mask: URL_B })))
    expect(std).toEqual({ '/static_mask': expect.stringMatching(/kling-v1-5 on image2video only in mode pro, 5 s/) })
    // The other fields stay open to every model on image2video.
    for (const one of [{ image_tail: URL_B }, { cfg_scale: 0.5 }, { camera_control: { type: 'down_back' } }]) {
      expect((await post(h, '/image2video', i2v({ model_name: 'kling-v2-6', ...one }))).statusCode).toBe(202)
    }
  })

  it('ALLOWED_MODELS still restricts: a model the table knows is refused unless the operator allows it', async () => {
    const only = await startHarness({ workers: false })
    try {
      expect(DEFAULT_MODEL_TABLE.image2video['kling-v1']).toBeDefined()
      const p = problemsOf(await post(only, '/image2video', i2v({ model_name: 'kling-v1', static_mask: URL_B })))
      expect(p).toEqual({ '/model_name': 'must be one of: kling-v1-6' })
    } finally {
      await only.close()
    }
  })
})

describe('MODEL_CAPABILITIES', () => {
  const harness = harnessPerTest()

  it('replaces the entries of the kinds it names, and keeps the defaults of the others', async () => {
    const table = {
      text2video: { '*': { modes: ['pro'], durations: [5] }, 'kling-v2-6': { cfg_scale: true, camera_control: true } }
    }
    const env = { MODEL_CAPABILITIES: JSON.stringify(table), ALLOWED_MODELS: 'kling-v1-6,kling-v2-6' }
    const h = await harness({ workers: false, env })
    // `*` on text2video: pro, 5 s, and no cfg_scale or camera_control (features left out are not supported).
    const extras = { duration: '10', cfg_scale: 0.5, camera_control: { type: 'down_back' } }
    const p = problemsOf(await post(h, '/text2video', t2v(extras)))
    expect(Object.keys(p).sort()).toEqual(['/camera_control', '/cfg_scale', '/duration', '/mode'])
    expect(p['/mode']).toBe('kling-v1-6 on text2video is made only in mode pro')
    expect(p['/duration']).toBe('kling-v1-6 on text2video is made only 5 s long')
    expect((await post(h, '/text2video', t2v({ mode: 'pro' }))).statusCode).toBe(202)
    // Its own entry (modes and durations left out: all of them).
    const own = t2v({ model_name: 'kling-v2-6', cfg_scale: 0.5, duration: '10' })
    expect((await post(h, '/text2video', own)).statusCode).toBe(202)
    // The kinds it does not name keep their defaults.
    expect(Object.keys(problemsOf(await post(h, '', multi(MASKS)))).sort()).toEqual(['/dynamic_masks', '/static_mask'])
  })

  it('lets masks through on multi-image2video when it says so; then upstream refuses them, as Kling does', async () => {
    const table = { 'multi-image2video': { 'kling-v1-6': { masks: true, cfg_scale: true } } }
    const h = await harness({ sim: { auto: false }, env: { MODEL_CAPABILITIES: JSON.stringify(table) } })
    const res = await post(h, '', multi({ static_mask: b64Png }))
    expect(res.statusCode, res.body).toBe(202)
    const done = await waitFor(h, res.json<TaskView>().id, t => t.status === 'failed')
    const refused = /static_mask and dynamic_masks are not supported by multi-image2video/
    expect(done.error).toEqual({ code: 'KLING_1201', message: expect.stringMatching(refused) })
    // Nothing was made upstream: the refusal is Kling's parameter check, before any task.
    expect(h.sim.tasks.size).toBe(0)
    expect(h.sim.createLog.map(c => c.taskId)).toEqual([null])
  })

  it('names every bad entry at start, in one ConfigError with the other bad variables', () => {
    const bad = {
      'image-to-video': {},
      image2video: {
        'kling-v1': { modes: ['std', 'hd'], masks: { durations: ['10'], fps: 30 }, sound: true },
        'bad name!': { masks: 'yes' },
        'kling-v1-5': { modes: ['pro'], masks: { modes: ['std'] } }
      },
      text2video: { '*': { image_tail: true, durations: [] } },
      'multi-image2video': []
    }
    let problems: string[] = []
    try {
      loadConfig({ MODEL_CAPABILITIES: JSON.stringify(bad), PORT: 'eighty' })
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError)
      problems = (err as ConfigError).problems
    }
    expect(problems).toEqual([
      'PORT: must be integer',
      'MODEL_CAPABILITIES: image-to-video is not a kind (multi-image2video, image2video, text2video)',
      'MODEL_CAPABILITIES: image2video.kling-v1.modes must be a non-empty list of distinct values of: std, pro',
      'MODEL_CAPABILITIES: image2video.kling-v1.sound is not a capability (modes, durations, cfg_scale, masks, ' +
        'camera_control, image_tail)',
      'MODEL_CAPABILITIES: image2video: model 2 is not a model name (A-Za-z0-9._-, or *)',
      'MODEL_CAPABILITIES: image2video.#2.masks must be true, false or { "modes"?: [...], "durations"?: [...] }',
      'MODEL_CAPABILITIES: image2video.kling-v1-5.masks names modes or durations the model itself does not have',
      'MODEL_CAPABILITIES: text2video.*.durations must be a non-empty list of distinct values of: 5, 10',
      'MODEL_CAPABILITIES: text2video.*.image_tail: text2video has no image_tail field',
      'MODEL_CAPABILITIES: multi-image2video must be an object of at least one model name (or "*") to its capability'
    ])
    expect(() => loadConfig({ MODEL_CAPABILITIES: '{"image2video":' })).toThrow(/MODEL_CAPABILITIES: is not valid JSON/)
    expect(() => loadConfig({ MODEL_CAPABILITIES: '[]' })).toThrow(/MODEL_CAPABILITIES: must be a JSON object/)
    // A feature's own bad keys and values are named too, once the model's modes are sound.
    const masks = { image2video: { 'kling-v1': { masks: { durations: ['10', '10'], fps: 30 } } } }
    expect(() => loadConfig({ MODEL_CAPABILITIES: JSON.stringify(masks) })).toThrow(
      /image2video\.kling-v1\.masks\.fps is not a key of a feature[\s\S]*image2video\.kling-v1\.masks\.durations must/)
  })

  it('sends a Base64 mask upstream, bare, where the table allows it (image2video, kling-v1)', async () => {
    const h = await harness({ sim: { auto: false }, env: { ALLOWED_MODELS: 'kling-v1-6,kling-v1' } })
    const image = makePng(640, 360)
    const mask = makePng(640, 360, 0xc8)
    const res = await post(h, '/image2video', i2v({
      model_name: 'kling-v1', image: image.toString('base64'), static_mask: `data:image/png;base64,${b64(mask)}`
    }))
    expect(res.statusCode, res.body).toBe(202)
    expect(res.json<TaskView>().request.static_mask).toMatchObject({ bytes: mask.length, width: 640, format: 'png' })
    const done = await waitFor(h, res.json<TaskView>().id, t => t.status === 'submitted')
    expect(done.status, JSON.stringify(done.error)).toBe('submitted')
    const [up] = [...h.sim.tasks.values()]
    expect(up.body).toMatchObject({ model_name: 'kling-v1', static_mask: b64(mask), image: b64(image) })
  })

  it('unset, the table is the default one', () => {
    expect(loadConfig({}).models).toEqual(DEFAULT_MODEL_TABLE)
  })
})

const b64 = (buf: Buffer) => buf.toString('base64')
const b64Png = b64(makePng(640, 360))
