/**
 * The /v1/videos routes end to end (docs/API.md, "Routes"): Base64 handling and where it may (not) end up, auth and
 * isolation, Idempotency-Key, reference, listing, cancel and body limits. Real app, real redis-server, real
 * simulator on loopback; no mocks.
 */
import { keys } from '../src/store/keys.ts'
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { createHash } from 'node:crypto'
import type { LightMyRequestResponse } from 'fastify'
import { auth, KEYS, startHarness, type Harness } from './helpers/harness.ts'
import { makeJpeg, makePng } from './helpers/images.ts'
import { Simulator } from '../simulator/app.ts'

type Body = Record<string, unknown>
type Who = 'alice' | 'bob' | 'ops'
interface Task { id: string, status: string, created_at: string, reference: string | null, request: Body }
interface Page { data: Task[], next_cursor: string | null }

const b64 = (buf: Buffer) => buf.toString('base64')
const sha256 = (buf: Buffer) => createHash('sha256').update(buf).digest('hex')
const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

function validBody (over: Body = {}): Body {
  return { image_list: [{ image: 'https://images.example.com/a.png' }, { image: 'https://images.example.com/b.jpg' }], prompt: 'a grey cat walks slowly across a sunny room', ...over }
}

/** Request helpers bound to one harness. */
function client (get: () => Harness) {
  const inject = async (opts: {
    method?: 'GET' | 'POST', url: string, who?: Who | null, headers?: Record<string, string>, payload?: unknown
  }) =>
    await get().app.inject({
      method: opts.method ?? 'GET',
      url: opts.url,
      headers: { ...(opts.who === null ? {} : auth(opts.who ?? 'alice')), ...opts.headers },
      ...(opts.payload !== undefined && { payload: opts.payload as Body })
    })
  return {
    inject,
    create: async (body: Body, who: Who = 'alice', headers: Record<string, string> = {}) =>
      await inject({ method: 'POST', url: '/v1/videos', who, headers, payload: body }),
    get: async (id: string, who: Who = 'alice') => await inject({ url: `/v1/videos/${id}`, who }),
    cancel: async (id: string, who: Who = 'alice') =>
      await inject({ method: 'POST', url: `/v1/videos/${id}/cancel`, who }),
    list: async (query: string, who: Who = 'alice') => await inject({ url: `/v1/videos?${query}`, who }),
    /** Every task the caller can list, following cursors. */
    all: async (who: Who = 'alice'): Promise<Task[]> => {
      const out: Task[] = []
      let cursor: string | null = null
      do {
        const cursorParam = cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`
        const res = await inject({ url: `/v1/videos?limit=100${cursorParam}`, who })
        expect(res.statusCode).toBe(200)
        const page = res.json<Page>()
        out.push(...page.data)
        cursor = page.next_cursor
      } while (cursor !== null)
      return out
    }
  }
}

function expectProblem (res: LightMyRequestResponse, status: number, code?: string) {
  expect(res.statusCode, res.body.slice(0, 400)).toBe(status)
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/)
  const p = res.json<{
    status: number, code: string, detail: string, errors?: Array<{ pointer: string, detail: string, location?: string }>
  }>()
  expect(p.status).toBe(status)
  if (code !== undefined) expect(p.code).toBe(code)
  return p
}

async function until<T> (what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v !== undefined && v !== null && v !== false) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

/** Every value of every key under the harness prefix, read with the command its TYPE needs. */
async function redisValues (
  h: Harness
): Promise<{ types: Map<string, string>, values: Array<{ key: string, value: Buffer }> }> {
  const r = h.redis
  const types = new Map<string, string>()
  const values: Array<{ key: string, value: Buffer }> = []
  const add = (key: string, bufs: Buffer[]) => { for (const value of bufs) values.push({ key, value }) }
  for (const key of await r.keys(`{${h.prefix}}:*`)) {
    const type = await r.type(key)
    types.set(key, type)
    add(key, [Buffer.from(key)])
    switch (type) {
      case 'string': { const v = await r.getBuffer(key); if (v !== null) add(key, [v]); break }
      case 'hash': add(key, Object.entries(await r.hgetallBuffer(key)).flatMap(([f, v]) => [Buffer.from(f), v])); break
      case 'list': add(key, await r.lrangeBuffer(key, 0, -1)); break
      case 'set': add(key, await r.smembersBuffer(key)); break
      case 'zset': add(key, await r.zrangeBuffer(key, '0', '-1')); break
      case 'stream': add(key, (await r.xrangeBuffer(key, '-', '+')).flatMap(([id, fields]) => [id, ...fields])); break
      case 'none': break // expired or deleted between KEYS and TYPE
      default: throw new Error(`key ${key} has type ${type}, which this scan does not read`)
    }
  }
  return { types, values }
}

/** Keys whose values contain any of `needles`. */
function holding (values: Array<{ key: string, value: Buffer }>, needles: Buffer[]): string[] {
  return [...new Set(values.filter(({ value }) => needles.some(n => value.includes(n))).map(({ key }) => key))]
}

/** The whole Base64 and a slice from its middle (a copy that was cut or re-wrapped still shows). */
const base64Needles = (images: Buffer[]) => images.flatMap(img => {
  const s = b64(img)
  const mid = Math.floor(s.length / 2)
  return [Buffer.from(s), Buffer.from(s.slice(mid - 24, mid + 24))]
})

describe('Base64 images', () => {
  const png = makePng(640, 360, 0x37)
  const jpeg = makeJpeg(480, 480)
  const mask = makePng(640, 360, 0xc8)
  const images = [png, jpeg, mask]
  const pngDescriptor = { sha256: sha256(png), bytes: png.length, width: 640, height: 360, format: 'png' }
  const jpegDescriptor = { sha256: sha256(jpeg), bytes: jpeg.length, width: 480, height: 480, format: 'jpeg' }

  describe('with a worker submitting to the simulator', () => {
    let h: Harness
    let sim: Simulator
    /** Every create body the simulator was sent, as it arrived. */
    const received: Body[] = []
    const c = client(() => h)

    beforeAll(async () => {
      sim = new Simulator({ apiKey: KEYS.comet, auto: false })
      sim.app.addHook('preHandler', async (request) => {
        if (request.method === 'POST' && request.url.startsWith('/kling/')) {
          received.push(structuredClone(request.body) as Body)
        }
      })
      h = await startHarness({ simulator: sim, env: { LOG_LEVEL: 'trace' } })
    })
    afterAll(async () => {
      await h?.close()
      await sim?.close()
    })

    it('stores a descriptor, sends the simulator the bare Base64, ' +
      'and keeps the Base64 out of Redis, the logs and every response', async () => {
      const first = await c.create(validBody({
        image_list: [{ image: `data:image/png;base64,${b64(png)}` }, { image: b64(jpeg) }]
      }))
      const second = await c.create(validBody({ image_list: [{ image: b64(jpeg) }, { image: 'https://images.example.com/b.jpg' }] }))
      for (const res of [first, second]) expect(res.statusCode, res.body.slice(0, 300)).toBe(202)
      expect(first.json().request.image_list).toEqual([{ image: pngDescriptor }, { image: jpegDescriptor }])
      expect(second.json().request.image_list).toEqual([{ image: jpegDescriptor }, { image: 'https://images.example.com/b.jpg' }])
      expect(first.headers.location).toBe(`/v1/videos/${first.json().id as string}`)

      const ids = [first.json().id as string, second.json().id as string]
      const bodies: string[] = [first.body, second.body]
      for (const id of ids) {
        await until(`task ${id} submitted`, async () => {
          const res = await c.get(id)
          bodies.push(res.body)
          return res.json().status === 'submitted'
        })
      }

      // The simulator got the Base64 itself, without the data: prefix, in the right places.
      expect(sim.tasks.size).toBe(2)
      const sent = received.map(b => (b.image_list as Array<{ image: string }>).map(i => i.image))
      expect(sent).toHaveLength(2)
      expect(sent).toContainEqual([b64(png), b64(jpeg)])
      expect(sent).toContainEqual([b64(jpeg), 'https://images.example.com/b.jpg'])
      for (const b of received) {
        expect(b.callback_url).toMatch(/\/callbacks\/kling\?token=/)
        expect(typeof b.external_task_id).toBe('string')
        expect(JSON.stringify(b)).not.toContain('data:')
      }

      // Once submitted, neither the Base64 nor the decoded bytes are anywhere under the prefix (the parked
      // copies are dropped right after upstream accepts, so allow that a moment).
      const needles = [...base64Needles(images), ...images]
      const scan = await until('parked images dropped', async () => {
        const s = await redisValues(h)
        return holding(s.values, needles).length === 0 ? s : undefined
      }, 3000)
      expect([...new Set(scan.types.values())].sort())
        .toEqual(expect.arrayContaining(['hash', 'list', 'stream', 'string', 'zset']))
      expect([...scan.types.keys()].some(k => k.includes(':submit:'))).toBe(true) // BullMQ's keys were read too

      const responses = [
        await c.list('limit=10'),
        await c.list('limit=10', 'ops'),
        ...await Promise.all(ids.map(async id => await c.get(id, 'ops')))
      ]
      for (const res of responses) {
        expect(res.statusCode).toBe(200)
        bodies.push(res.body)
      }
      for (const text of [...bodies, h.logs.text]) {
        for (const needle of base64Needles(images)) expect(text.includes(needle.toString())).toBe(false)
      }
      expect(h.logs.lines.length).toBeGreaterThan(10) // trace logging really ran
    })

    it('refuses to cancel a task that has been submitted (409) and leaves it as it is', async () => {
      const res = await c.create(validBody())
      const id = res.json().id as string
      await until('submitted', async () => (await c.get(id)).json().status === 'submitted')
      const p = expectProblem(await c.cancel(id), 409, 'NOT_CANCELABLE')
      expect(p.detail).toMatch(/submitted/)
      expect((await c.get(id)).json()).toMatchObject({ status: 'submitted', sequence: 2 })
    })
  })

  describe('before submission (no workers)', () => {
    let h: Harness
    const c = client(() => h)
    beforeAll(async () => { h = await startHarness({ workers: false }) })
    afterAll(async () => { await h?.close() })

    it('parks only the decoded bytes: no key, BullMQ job hash included, holds the Base64', async () => {
      const res = await c.create(validBody({
        image_list: [{ image: `data:image/png;base64,${b64(png)}` }, { image: b64(jpeg) }]
      }))
      expect(res.statusCode).toBe(202)
      const id = res.json().id as string
      const { types, values } = await redisValues(h)
      expect(holding(values, base64Needles(images))).toEqual([])
      // The scan does find things: the raw bytes are parked for the worker, under this task only.
      const parkedKey = keys(h.prefix).parked(id)
      expect(holding(values, [png])).toEqual([parkedKey])
      expect(holding(values, [jpeg])).toEqual([parkedKey])
      const job = [...types].find(([k]) => k.endsWith(`:submit:${id}`))
      expect(job?.[1]).toBe('hash')
      expect((await c.get(id)).body).not.toContain(b64(png).slice(0, 200))
    })

    it('cancels a queued task (200 canceled), refuses a second cancel (409) and drops its parked images', async () => {
      const res = await c.create(validBody({ image_list: [{ image: b64(mask) }, { image: 'https://images.example.com/b.jpg' }] }))
      const id = res.json().id as string
      expect(holding((await redisValues(h)).values, [mask]).length).toBe(1)

      const canceled = await c.cancel(id)
      expect(canceled.statusCode).toBe(200)
      expect(canceled.json()).toMatchObject({ id, status: 'canceled', sequence: 2 })
      expect((await c.get(id)).json().status).toBe('canceled')
      expect(holding((await redisValues(h)).values, [mask])).toEqual([])

      const again = expectProblem(await c.cancel(id), 409, 'NOT_CANCELABLE')
      expect(again.detail).toMatch(/canceled/)
      expectProblem(await c.cancel('no-such-task'), 404, 'NOT_FOUND')
    })
  })
})

describe('auth and isolation', () => {
  let h: Harness
  const c = client(() => h)
  beforeAll(async () => { h = await startHarness({ workers: false }) })
  afterAll(async () => { await h?.close() })

  it('answers a missing, unknown or malformed key with 401 problem+json on every route', async () => {
    const routes: Array<{ method: 'GET' | 'POST', url: string, payload?: unknown }> = [
      { method: 'POST', url: '/v1/videos', payload: validBody() },
      { method: 'GET', url: '/v1/videos' },
      { method: 'GET', url: '/v1/videos/some-id' },
      { method: 'POST', url: '/v1/videos/some-id/cancel' }
    ]
    const headers: Array<Record<string, string>> = [
      {},
      { authorization: 'Bearer not-a-key-of-anyone-at-all' },
      { authorization: `Basic ${KEYS.alice}` },
      { authorization: `Bearer${KEYS.alice}` },
      { authorization: `Bearer ${KEYS.alice}x` }
    ]
    for (const route of routes) {
      for (const hdr of headers) {
        const res = await c.inject({ ...route, who: null, headers: hdr })
        const p = expectProblem(res, 401, 'UNAUTHORIZED')
        expect(p.detail).toBeTruthy()
        expect(res.headers['www-authenticate']).toBe('Bearer')
      }
    }
    expect(await c.all('ops')).toEqual([]) // the refused create stored nothing
  })

  it('keeps each caller to its own tasks (another\'s is 404, as if missing) ' +
    'and shows the admin all of them', async () => {
    const a = (await c.create(validBody({ reference: 'shared-ref' }), 'alice')).json<Task>()
    const b = (await c.create(validBody(), 'bob')).json<Task>()

    const missing = expectProblem(await c.get('00000000-0000-0000-0000-000000000000', 'bob'), 404, 'NOT_FOUND')
    const hidden = expectProblem(await c.get(a.id, 'bob'), 404, 'NOT_FOUND')
    expect(hidden.detail).toBe(missing.detail) // nothing tells "exists but not yours" from "does not exist"
    expectProblem(await c.cancel(a.id, 'bob'), 404, 'NOT_FOUND')
    expect((await c.get(a.id, 'alice')).json().status).toBe('queued') // bob's cancel did nothing
    expectProblem(await c.get(b.id, 'alice'), 404, 'NOT_FOUND')
    expect((await c.list('reference=shared-ref', 'bob')).json().data).toEqual([])

    const seenByOps = await c.get(a.id, 'ops')
    expect(seenByOps.statusCode).toBe(200)
    expect(seenByOps.json().id).toBe(a.id)
    expect((await c.get(b.id, 'ops')).json().id).toBe(b.id)

    expect((await c.all('alice')).map(t => t.id)).toEqual([a.id])
    expect((await c.all('bob')).map(t => t.id)).toEqual([b.id])
    expect((await c.all('ops')).map(t => t.id).sort()).toEqual([a.id, b.id].sort())
  })
})

describe('Idempotency-Key', () => {
  let h: Harness
  const c = client(() => h)
  beforeAll(async () => { h = await startHarness({ workers: false }) })
  afterAll(async () => { await h?.close() })

  it('replays the first response for the same key and body, ' +
    'and refuses the same key with a different body (422)', async () => {
    const key = { 'idempotency-key': 'order-42-attempt' }
    const body = validBody({
      image_list: [{ image: b64(makePng(400, 300)) }, { image: b64(makeJpeg(300, 300)) }], metadata: { order: 42 }
    })
    const first = await c.create(body, 'alice', key)
    expect(first.statusCode).toBe(202)
    expect(first.headers['idempotent-replayed']).toBeUndefined()

    const again = await c.create(structuredClone(body), 'alice', key)
    expect(again.statusCode).toBe(first.statusCode)
    expect(again.headers['idempotent-replayed']).toBe('true')
    expect(again.json().id).toBe(first.json().id)
    expect(again.json()).toEqual(first.json())

    // Same key order-insensitive: a body with its fields in another order is the same body.
    const reordered = Object.fromEntries(Object.entries(body).reverse())
    expect((await c.create(reordered, 'alice', key)).json().id).toBe(first.json().id)

    const changedBodies = [
      { ...body, prompt: 'something else' },
      { ...body, metadata: { order: 43 } },
      validBody({
        image_list: [{ image: b64(makePng(400, 301)) }, { image: b64(makeJpeg(300, 300)) }], metadata: { order: 42 }
      })
    ]
    for (const changed of changedBodies) {
      expectProblem(await c.create(changed, 'alice', key), 422, 'IDEMPOTENCY_KEY_REUSED')
    }
    expect((await c.all('alice')).map(t => t.id)).toEqual([first.json().id])

    // Keys are per caller: bob's same key is his own, new request.
    const bobs = await c.create(body, 'bob', key)
    expect(bobs.statusCode).toBe(202)
    expect(bobs.json().id).not.toBe(first.json().id)
    expect(bobs.headers['idempotent-replayed']).toBeUndefined()
  })

  it('creates exactly one task for 20 concurrent identical creates with one key; the other 19 replay it', async () => {
    const key = { 'idempotency-key': 'burst-' + Date.now() }
    const body = validBody({ prompt: 'a burst of identical retries' })
    const responses = await Promise.all(Array.from({ length: 20 }, async () => await c.create(body, 'bob', key)))
    const tasks = (await c.all('bob')).filter(t => t.request.prompt === body.prompt)
    expect(tasks).toHaveLength(1)
    const id = tasks[0].id
    // The key's record is written by the same script as the task: no "in flight" state a retry could hit.
    for (const res of responses) {
      expect(res.statusCode, res.body).toBe(202)
      expect(res.json().id).toBe(id)
    }
    expect(responses.filter(r => r.headers['idempotent-replayed'] === undefined)).toHaveLength(1)
    expect(responses.filter(r => r.headers['idempotent-replayed'] === 'true')).toHaveLength(19)
    const later = await c.create(body, 'bob', key)
    expect(later.statusCode).toBe(202)
    expect(later.json().id).toBe(id)
  })

  it('refuses a key longer than 255 characters (400) and accepts one of 255', async () => {
    const res = await c.create(validBody(), 'alice', { 'idempotency-key': 'k'.repeat(256) })
    const p = expectProblem(res, 400, 'INVALID_REQUEST')
    expect(p.errors).toEqual([expect.objectContaining({ pointer: '/idempotency-key', location: 'headers' })])
    expect((await c.create(validBody(), 'alice', { 'idempotency-key': 'k'.repeat(255) })).statusCode).toBe(202)
  })

  it('lists a bad key beside the bad body fields', async () => {
    const res = await c.create({ ...validBody(), mode: 'hd' }, 'alice', { 'idempotency-key': 'k'.repeat(256) })
    const p = expectProblem(res, 400, 'INVALID_REQUEST')
    expect(p.errors?.map(e => `${e.location ?? ''}:${e.pointer}`).sort())
      .toEqual(['body:/mode', 'headers:/idempotency-key'])
  })
})

describe('reference', () => {
  let h: Harness
  const c = client(() => h)
  beforeAll(async () => { h = await startHarness({ workers: false }) })
  afterAll(async () => { await h?.close() })

  it('is unique per caller: a second create is 409 naming the first task; ' +
    'another caller may use it; ?reference= finds it', async () => {
    const first = await c.create(validBody({ reference: 'invoice-7' }))
    expect(first.statusCode).toBe(202)
    const firstId = first.json().id as string
    expect(first.json().reference).toBe('invoice-7')
    const parkedBefore = (await h.redis.keys(`{${h.prefix}}:*:parked`)).length

    const dup = expectProblem(await c.create(validBody({ reference: 'invoice-7', prompt: 'another', image_list: [{ image: b64(makePng(300, 300)) }, { image: 'https://images.example.com/b.jpg' }] })), 409, 'REFERENCE_TAKEN')
    expect(dup.detail).toContain(firstId)
    expect((await c.all('alice')).map(t => t.id)).toEqual([firstId])
    expect((await h.redis.keys(`{${h.prefix}}:*:parked`)).length)
      .toBe(parkedBefore) // the refused one's images are not left behind

    const bobs = await c.create(validBody({ reference: 'invoice-7' }), 'bob')
    expect(bobs.statusCode).toBe(202)
    expect(bobs.json().id).not.toBe(firstId)

    const found = await c.list('reference=invoice-7')
    expect(found.statusCode).toBe(200)
    expect(found.json())
      .toEqual({ data: [expect.objectContaining({ id: firstId, reference: 'invoice-7' })], next_cursor: null })
    expect((await c.list('reference=invoice-7', 'bob')).json().data.map((t: Task) => t.id)).toEqual([bobs.json().id])
    expect((await c.list('reference=invoice-8')).json()).toEqual({ data: [], next_cursor: null })
    expect((await c.list('reference=invoice-7&status=canceled')).json().data).toEqual([])
  })

  it('a reference conflict under an Idempotency-Key stays a 409 on retry, not a replayed success', async () => {
    await c.create(validBody({ reference: 'ref-idem' }), 'bob')
    const key = { 'idempotency-key': 'ref-idem-key' }
    expectProblem(await c.create(validBody({ reference: 'ref-idem' }), 'bob', key), 409, 'REFERENCE_TAKEN')
    expectProblem(await c.create(validBody({ reference: 'ref-idem' }), 'bob', key), 409, 'REFERENCE_TAKEN')
  })
})

describe('listing', () => {
  let h: Harness
  const c = client(() => h)
  beforeAll(async () => { h = await startHarness({ workers: false }) })
  afterAll(async () => { await h?.close() })

  async function pages (query: string, who: Who): Promise<Page[]> {
    const out: Page[] = []
    let cursor: string | null = null
    do {
      const res = await c.list(`${query}${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`, who)
      expect(res.statusCode, res.body).toBe(200)
      out.push(res.json<Page>())
      cursor = out.at(-1)?.next_cursor ?? null
      expect(out.length).toBeLessThan(20)
    } while (cursor !== null)
    return out
  }

  it('pages newest first with limit and cursor, without duplicates or gaps, and filters by status', async () => {
    const ids: string[] = []
    for (let i = 0; i < 7; i++) {
      ids.push((await c.create(validBody({ prompt: `task ${i}` }))).json().id as string)
      await sleep(3) // distinct created_at, so "newest first" is the creation order reversed
    }
    const newestFirst = [...ids].reverse()

    const paged = await pages('limit=3', 'alice')
    expect(paged.map(p => p.data.length)).toEqual([3, 3, 1])
    expect(paged.flatMap(p => p.data.map(t => t.id))).toEqual(newestFirst)
    expect(paged.at(-1)?.next_cursor).toBeNull()
    expect(paged[0].next_cursor).toEqual(expect.any(String))

    expect((await c.list('limit=7')).json()).toMatchObject({ next_cursor: null })
    expect((await c.list('')).json().data.map((t: Task) => t.id)).toEqual(newestFirst) // default limit 20

    await c.cancel(ids[1])
    await c.cancel(ids[4])
    const canceled = (await c.list('status=canceled')).json<Page>()
    expect(canceled.data.map(t => t.id)).toEqual([ids[4], ids[1]])
    expect(canceled.data.every(t => t.status === 'canceled')).toBe(true)
    const queued = await pages('status=queued&limit=2', 'alice')
    expect(queued.flatMap(p => p.data.map(t => t.id))).toEqual(newestFirst.filter(id => id !== ids[1] && id !== ids[4]))
    expect((await c.list('status=succeeded')).json()).toEqual({ data: [], next_cursor: null })
  })

  it('pages tasks created in the same millisecond without duplicates or gaps', async () => {
    const created = await Promise.all(
      Array.from({ length: 12 }, async (_, i) => await c.create(validBody({ prompt: `burst ${i}` }), 'bob'))
    )
    const ids = created.map(r => r.json().id as string)
    const listed = (await pages('limit=3', 'bob')).flatMap(p => p.data)
    expect(listed.map(t => t.id).sort()).toEqual([...ids].sort())
    expect(new Set(listed.map(t => t.id)).size).toBe(listed.length)
    const times = listed.map(t => Date.parse(t.created_at))
    expect(times).toEqual([...times].sort((x, y) => y - x))
  })

  it('refuses limit 0, 101 and a malformed cursor or status (400, query pointers)', async () => {
    const cases = [
      ['limit=0', '/limit'], ['limit=101', '/limit'], ['limit=abc', '/limit'],
      ['cursor=zzz', '/cursor'], ['status=done', '/status']
    ]
    for (const [query, pointer] of cases) {
      const p = expectProblem(await c.list(query), 400, 'INVALID_REQUEST')
      expect(p.errors?.map(e => e.pointer)).toEqual([pointer])
      expect(p.errors?.[0].location).toBe('query')
    }
    expect((await c.list('limit=100')).statusCode).toBe(200)
    expect((await c.list('limit=1')).json().data).toHaveLength(1)
  })
})

describe('body limits', () => {
  let h: Harness
  const c = client(() => h)
  beforeAll(async () => { h = await startHarness({ workers: false, env: { CREATE_BODY_LIMIT_BYTES: '200000' } }) })
  afterAll(async () => { await h?.close() })

  it('refuses a create body over CREATE_BODY_LIMIT_BYTES with 413, and takes one under it', async () => {
    const big = validBody({ image_list: [{ image: b64(Buffer.alloc(160_000, 7)) }, { image: 'https://images.example.com/b.jpg' }] })
    expect(JSON.stringify(big).length).toBeGreaterThan(200_000)
    expectProblem(await c.create(big), 413)
    expect(await c.all()).toEqual([])

    const fits = validBody({ metadata: { pad: 'x'.repeat(4000) }, image_list: [{ image: b64(makePng(2000, 2000, 0x12)) }, { image: 'https://images.example.com/b.jpg' }] })
    expect(JSON.stringify(fits).length).toBeLessThan(200_000)
    expect((await c.create(fits)).statusCode).toBe(202)
  })

  it('keeps the 1 MB limit on other routes: a 2 MB cancel body is 413, a 500 KB one is not', async () => {
    const id = (await c.create(validBody())).json().id as string
    const pad = (n: number) => JSON.stringify({ pad: 'x'.repeat(n) })
    const tooBig = await c.inject({
      method: 'POST',
      url: `/v1/videos/${id}/cancel`,
      headers: { 'content-type': 'application/json' },
      payload: pad(2 * 1024 * 1024)
    })
    expectProblem(tooBig, 413)
    expect((await c.get(id)).json().status).toBe('queued')
    const fine = await c.inject({
      method: 'POST',
      url: `/v1/videos/${id}/cancel`,
      headers: { 'content-type': 'application/json' },
      payload: pad(500 * 1024)
    })
    expect(fine.statusCode).toBe(200)
    expect(fine.json().status).toBe('canceled')
  })
})
