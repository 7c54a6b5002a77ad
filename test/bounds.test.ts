/**
 * What a hostile body can cost (GitHub issue 13, items 1 and 8), against the real app and Redis: every answer is a
 * bounded problem+json, fast, and none of Fastify's or Node's own refusals leak an `FST_…` code or a bare body.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import net from 'node:net'
import { performance } from 'node:perf_hooks'
import type { LightMyRequestResponse } from 'fastify'
import { auth, startHarness, type Harness } from './helpers/harness.ts'
import { MAX_LISTED_ERRORS, MAX_NAME_CHARS } from '../src/plugins/bounds.ts'

const URL_A = 'https://images.example.com/a.png'
const valid = () => ({ image_list: [{ image: URL_A }, { image: URL_A }], prompt: 'a grey cat walks slowly' })

function expectProblem (res: LightMyRequestResponse, status: number, code: string) {
  expect(res.statusCode, res.body).toBe(status)
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/)
  const body = res.json()
  expect(body).toMatchObject({ status, code })
  expect(body.code).not.toMatch(/^FST_/)
  if (body.errors !== undefined) expect(body.errors.length).toBeLessThanOrEqual(MAX_LISTED_ERRORS)
  return body
}

/** One raw HTTP/1.1 exchange: what Node's parser answers before Fastify sees a request. */
async function raw (port: number, request: string): Promise<string> {
  return await new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let out = ''
    socket.on('data', d => { out += d.toString() })
    socket.on('error', () => resolve(out))
    socket.on('close', () => resolve(out))
    socket.on('connect', () => { socket.write(request) })
    setTimeout(() => { socket.destroy(); reject(new Error(`no answer: ${out}`)) }, 5000).unref()
  })
}

describe('bounded validation', () => {
  let h: Harness
  let port: number
  const post = async (payload: unknown, headers: Record<string, string> = {}) => {
    const start = performance.now()
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/videos',
      headers: { ...auth('alice'), 'content-type': 'application/json', ...headers },
      payload: typeof payload === 'string' ? payload : JSON.stringify(payload)
    })
    return { res, ms: performance.now() - start }
  }

  beforeAll(async () => {
    h = await startHarness({ workers: false, listen: true })
    port = Number(new URL(h.config.publicBaseUrl as string).port)
  })
  afterAll(async () => { await h.close() })

  it('refuses a 50,000-item image_list by its length, fast, without checking the items', async () => {
    const body = { ...valid(), image_list: Array.from({ length: 50_000 }, () => ({ image: 'x' })) }
    const { res, ms } = await post(body)
    const problem = expectProblem(res, 400, 'INVALID_REQUEST')
    expect(problem.errors)
      .toEqual([{ pointer: '/image_list', detail: 'must NOT have more than 4 items', location: 'body' }])
    expect(ms).toBeLessThan(500)
  })

  it('refuses metadata nested 5,000 deep as 400, not a stack overflow', async () => {
    const text = '{"image_list":[{"image":"' + URL_A + '"},{"image":"' + URL_A + '"}],"prompt":"p","metadata":' +
      '{"a":'.repeat(5000) + '1' + '}'.repeat(5000) + '}'
    const { res, ms } = await post(text)
    const problem = expectProblem(res, 400, 'INVALID_REQUEST')
    expect(problem.errors).toHaveLength(1)
    expect(problem.errors[0].detail).toMatch(/deeper than 32 levels/)
    expect(problem.errors[0].pointer.length).toBeLessThan(300)
    expect(ms).toBeLessThan(500)
  })

  it('refuses a lone surrogate in reference (and in a name) as 400 naming the field', async () => {
    const text = JSON.stringify({ ...valid(), reference: 'ref-' }).replace('"ref-"', '"ref-\\ud800"')
    const { res } = await post(text)
    const problem = expectProblem(res, 400, 'INVALID_REQUEST')
    expect(problem.errors).toEqual([
      { pointer: '/reference', detail: 'must be well-formed Unicode (it has a lone surrogate)', location: 'body' }
    ])
    const name = await post(JSON.stringify({ ...valid(), metadata: { k: 1 } }).replace('"k"', '"\\udc00k"'))
    expect(expectProblem(name.res, 400, 'INVALID_REQUEST').errors[0].pointer).toMatch(/^\/metadata\//)
  })

  it('lists at most 50 errors, counts the rest, and cuts the names the caller chose', async () => {
    const body: Record<string, unknown> = valid()
    for (let i = 0; i < 5000; i++) body[`unknown_${i}_${'n'.repeat(10_000 / 50)}`] = i
    body['y'.repeat(10_000)] = 1
    const { res, ms } = await post(body)
    const problem = expectProblem(res, 400, 'INVALID_REQUEST')
    expect(problem.errors).toHaveLength(MAX_LISTED_ERRORS)
    expect(problem.errors_omitted).toBe(5001 - MAX_LISTED_ERRORS)
    for (const e of problem.errors) expect(e.pointer.length).toBeLessThanOrEqual(MAX_NAME_CHARS + 2)
    expect(res.body.length).toBeLessThan(20_000)
    expect(ms).toBeLessThan(500)
  })

  it('answers bad JSON with where it broke, without echoing the body', async () => {
    const { res } = await post('{"prompt":"secret-prompt-text", oops}')
    const problem = expectProblem(res, 400, 'INVALID_JSON')
    expect(problem.detail).toMatch(/breaks at character \d+/)
    expect(res.body).not.toContain('secret-prompt-text')
    expect(expectProblem((await post('{"prompt":')).res, 400, 'INVALID_JSON').detail).toMatch(/ends before/)
    expect(expectProblem((await post('')).res, 400, 'INVALID_JSON').detail).toMatch(/empty/)
    expect(expectProblem((await post('{"__proto__":{"x":1}}')).res, 400, 'INVALID_REQUEST').errors[0].pointer)
      .toBe('/__proto__')
  })

  it('answers 415 and 413 with what to send instead', async () => {
    const { res: xml } = await post('<a/>', { 'content-type': 'application/xml' })
    expect(expectProblem(xml, 415, 'UNSUPPORTED_MEDIA_TYPE').detail).toMatch(/application\/json/)
    // inject gives a string payload a Content-Type; a body without one needs a raw request.
    const missing = await raw(port, `POST /v1/videos HTTP/1.1\r\nHost: x\r\nAuthorization: ${auth('alice')
      .authorization}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`)
    expect(missing).toMatch(/^HTTP\/1.1 415/)
    expect(missing).toMatch(/no Content-Type: send Content-Type: application\/json/)
    const big = await h.app.inject({
      method: 'POST',
      url: '/v1/videos/00000000-0000-0000-0000-000000000000/cancel',
      headers: { ...auth('alice'), 'content-type': 'application/json' },
      payload: JSON.stringify({ pad: 'x'.repeat(1024 * 1024) })
    })
    expect(expectProblem(big, 413, 'BODY_TOO_LARGE').detail).toMatch(/limit of 1048576 bytes/)
  })

  it('answers a bad URL, a too-long id, and too-large headers as problem+json', async () => {
    const bad = await h.app.inject({ method: 'GET', url: '/v1/videos/%E0%A4%A', headers: auth('alice') })
    expectProblem(bad, 404, 'NOT_FOUND')
    const long = await h.app.inject({ method: 'GET', url: `/v1/videos/${'a'.repeat(200)}`, headers: auth('alice') })
    expect(expectProblem(long, 414, 'URI_TOO_LONG').detail).toMatch(/longer than 100 characters/)

    const url = await raw(port, `GET /v1/videos?x=${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`)
    expect(url).toMatch(/^HTTP\/1.1 414 /)
    expect(url).toMatch(/application\/problem\+json/)
    expect(JSON.parse(url.slice(url.indexOf('\r\n\r\n') + 4))).toMatchObject({ status: 414, code: 'URI_TOO_LONG' })
    const headers = await raw(port, `GET /v1/videos HTTP/1.1\r\nHost: x\r\nX-Pad: ${'a'.repeat(20_000)}\r\n\r\n`)
    expect(headers).toMatch(/^HTTP\/1.1 431 /)
    expect(JSON.parse(headers.slice(headers.indexOf('\r\n\r\n') + 4)))
      .toMatchObject({ status: 431, code: 'HEADERS_TOO_LARGE' })
  })

  it('still accepts a valid create', async () => {
    const { res } = await post(valid())
    expect(res.statusCode, res.body).toBe(202)
  })
})
