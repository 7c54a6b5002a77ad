/**
 * The upstream client against the real simulator over loopback HTTP, plus a tiny scripted node:http server for the
 * answers the simulator does not give (redirects, odd bodies, stalls). No mocks.
 */
import { describe, it, expect, beforeAll, afterAll, beforeEach } from 'vitest'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { type AddressInfo } from 'node:net'
import { inspect } from 'node:util'
import { randomBytes, randomUUID } from 'node:crypto'
import { Simulator } from '../simulator/app.ts'
import { UpstreamError, parseRetryAfter, parseTask } from '../src/upstream/client.ts'
import { CometApiAdapter } from '../src/upstream/cometapi.ts'

/** Every test here is about the wire, which is the same for every kind; the kind tests are in test/kling.test.ts. */
const MI = 'multi-image2video' as const

const KEY = 'sk-upstream-test-' + randomBytes(12).toString('hex')
/** Every error any call threw, checked for the key at the end. */
const seen: unknown[] = []

async function failure (call: Promise<unknown>): Promise<UpstreamError> {
  try {
    await call
  } catch (err) {
    seen.push(err)
    expect(err).toBeInstanceOf(UpstreamError)
    return err as UpstreamError
  }
  throw new Error('expected the call to fail')
}

function createBody (ext: string = randomUUID()): Record<string, unknown> {
  return {
    model_name: 'kling-v1-6',
    image_list: [{ image: 'https://example.com/a.png' }, { image: 'https://example.com/b.png' }],
    prompt: 'two cats walk toward the camera',
    mode: 'std',
    duration: '5',
    external_task_id: ext
  }
}

/** A one-route HTTP server whose answer each test scripts; it records what it was sent. */
class Scripted {
  server: Server
  url = ''
  handler: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => { res.writeHead(500).end() }
  requests: Array<{ method: string, url: string, headers: IncomingMessage['headers'], body: string }> = []

  constructor () {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        this.requests.push({
          method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString()
        })
        this.handler(req, res)
      })
    })
  }

  async listen (): Promise<string> {
    await new Promise<void>(resolve => this.server.listen(0, '127.0.0.1', resolve))
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`
    return this.url
  }

  json (status: number, body: unknown, headers: Record<string, string> = {}): void {
    this.handler = (_req, res) => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers })
        .end(typeof body === 'string' ? body : JSON.stringify(body))
    }
  }

  async close (): Promise<void> {
    this.server.closeAllConnections()
    await new Promise<void>(resolve => this.server.close(() => resolve()))
  }
}

describe('CometApiAdapter against the simulator', () => {
  const sim = new Simulator({ apiKey: KEY, auto: false })
  const scripted = new Scripted()
  let client: CometApiAdapter
  let fast: CometApiAdapter
  let viaScript: CometApiAdapter

  beforeAll(async () => {
    const url = await sim.listen()
    await scripted.listen()
    client = new CometApiAdapter({ baseUrl: url, apiKey: KEY, timeoutMs: 5000 })
    fast = new CometApiAdapter({ baseUrl: url, apiKey: KEY, timeoutMs: 300 })
    viaScript = new CometApiAdapter({ baseUrl: scripted.url, apiKey: KEY, timeoutMs: 1000 })
  })

  afterAll(async () => {
    await client.close()
    await fast.close()
    await viaScript.close()
    await scripted.close()
    await sim.close()
  })

  beforeEach(() => { sim.faults = [] })

  describe('success', () => {
    it('creates a task: string id, submitted, external id echoed', async () => {
      const ext = randomUUID()
      const task = await client.create(MI, createBody(ext))
      expect(task.taskId).toMatch(/^\d{18,19}$/)
      expect(task.status).toBe('submitted')
      expect(task.externalTaskId).toBe(ext)
      expect(task.videos).toEqual([])
      expect(typeof task.createdAt).toBe('number')
      expect(sim.acceptedFor(ext)).toBe(1)
    })

    it('queries by task id and by external id, through to success', async () => {
      const ext = randomUUID()
      const created = await client.create(MI, createBody(ext))

      const byId = await client.query(MI, created.taskId)
      expect(byId).toMatchObject({ taskId: created.taskId, status: 'submitted', externalTaskId: ext, statusMsg: null })

      sim.setStatus(created.taskId, 'processing')
      expect((await client.query(MI, ext))?.status).toBe('processing')

      sim.setStatus(created.taskId, 'succeed')
      const done = await client.query(MI, ext)
      expect(done?.taskId).toBe(created.taskId)
      expect(done?.status).toBe('succeed')
      expect(done?.videos).toHaveLength(1)
      expect(done?.videos[0].url).toContain(created.taskId)
      expect(done?.videos[0].duration).toBe('5')
      expect(done?.updatedAt).toBeGreaterThanOrEqual(done?.createdAt ?? Infinity)
    })

    it('carries the failure reason of a failed task', async () => {
      const created = await client.create(MI, createBody())
      sim.setStatus(created.taskId, 'failed', 'content risk control')
      expect(await client.query(MI, created.taskId))
        .toMatchObject({ status: 'failed', statusMsg: 'content risk control' })
    })

    it('a query miss is null, for an unknown id and for a not-found answer', async () => {
      expect(await client.query(MI, '999999999999999999')).toBeNull()
      expect(await client.query(MI, randomUUID())).toBeNull()
      const created = await client.create(MI, createBody())
      sim.inject({ on: 'query', kind: 'not-found' })
      expect(await client.query(MI, created.taskId)).toBeNull()
    })

    it('sends the bearer key and JSON', async () => {
      scripted.json(200, {
        code: 0,
        message: 'SUCCEED',
        data: {
          task_id: '861309198188019719',
          task_status: 'submitted',
          task_info: {},
          created_at: 1773380633979,
          updated_at: 1773380633979
        }
      })
      const before = scripted.requests.length
      const body = createBody('ext-1')
      const task = await viaScript.create(MI, body)
      expect(task).toMatchObject({
        taskId: '861309198188019719', status: 'submitted', externalTaskId: 'ext-1', createdAt: 1773380633979
      })
      const req = scripted.requests[before]
      expect(req.method).toBe('POST')
      expect(req.url).toBe('/kling/v1/videos/multi-image2video')
      expect(req.headers.authorization).toBe(`Bearer ${KEY}`)
      expect(req.headers['content-type']).toBe('application/json')
      expect(JSON.parse(req.body)).toEqual(body)
    })

    it('keeps a numeric 19-digit task id exact', async () => {
      scripted.json(200, '{"code":0,"message":"SUCCEED",' +
        '"data":{"task_id":8613091981880197191,"task_status":"submitted"}}')
      expect((await viaScript.create(MI, createBody())).taskId).toBe('8613091981880197191')
    })

    it('reads the nested new-api query shape', async () => {
      scripted.json(200, { code: 'success', message: '', data: { task_id: 'task_abc', status: 'SUCCESS', progress: '100%', data: { task_id: '878106242831892487', task_status: 'succeed', task_result: { videos: [{ id: 'v1', url: 'https://cdn.example/v1.mp4', duration: '5.1' }] } } } })
      const task = await viaScript.query(MI, '878106242831892487')
      expect(task).toMatchObject({ taskId: '878106242831892487', status: 'succeed', videos: [{ id: 'v1', url: 'https://cdn.example/v1.mp4', duration: '5.1' }] })
      expect(scripted.requests.at(-1)?.url).toBe('/kling/v1/videos/multi-image2video/878106242831892487')
    })

    it('encodes the id into the path', async () => {
      scripted.json(400, { code: 1201, message: 'Task not found by id/external id: a/b?c', request_id: 'r' })
      expect(await viaScript.query(MI, 'a/b?c')).toBeNull()
      expect(scripted.requests.at(-1)?.url).toBe('/kling/v1/videos/multi-image2video/a%2Fb%3Fc')
    })
  })

  describe('faults injected into the simulator', () => {
    it('http-error 503 on create: retryable, may have created', async () => {
      sim.inject({ on: 'create', kind: 'http-error', status: 503, message: 'service busy' })
      const err = await failure(client.create(MI, createBody()))
      expect(err).toMatchObject({ code: 'UPSTREAM_HTTP_503', retryable: true, maybeCreated: true, httpStatus: 503 })
      expect(err.message).toContain('service busy')
      expect(err.requestId).toMatch(/^[0-9a-f-]{36}$/)
    })

    it('http-error 503 on query: retryable, never "may have created"', async () => {
      sim.inject({ on: 'query', kind: 'http-error', status: 503 })
      expect(await failure(client.query(MI, '1')))
        .toMatchObject({ code: 'UPSTREAM_HTTP_503', retryable: true, maybeCreated: false })
    })

    it('http-error 401: not retryable, not created', async () => {
      sim.inject({ on: 'create', kind: 'http-error', status: 401, message: 'invalid token' })
      expect(await failure(client.create(MI, createBody())))
        .toMatchObject({ code: 'UPSTREAM_HTTP_401', retryable: false, maybeCreated: false, httpStatus: 401 })
    })

    it('a wrong key is a 401 that is not retryable', async () => {
      const wrong = new CometApiAdapter({
        baseUrl: sim.baseUrl, apiKey: 'sk-wrong-' + randomBytes(8).toString('hex'), timeoutMs: 2000
      })
      try {
        expect(await failure(wrong.create(MI, createBody())))
          .toMatchObject({ httpStatus: 401, retryable: false, maybeCreated: false })
      } finally {
        await wrong.close()
      }
    })

    it('comet 500 invalid_request is not retryable; 403 insufficient_user_quota is named', async () => {
      sim.inject({ on: 'create', kind: 'http-error', status: 500, code: 'invalid_request', message: 'bad field' })
      expect(await failure(client.create(MI, createBody())))
        .toMatchObject({ code: 'COMET_invalid_request', retryable: false, maybeCreated: false, httpStatus: 500 })
      sim.inject({
        on: 'create',
        kind: 'http-error',
        status: 403,
        code: 'insufficient_user_quota',
        message: 'user quota is not enough'
      })
      expect(await failure(client.create(MI, createBody())))
        .toMatchObject({
          code: 'COMET_insufficient_user_quota',
          retryable: false,
          maybeCreated: false,
          message: expect.stringContaining('user quota is not enough')
        })
      sim.inject({
        on: 'create', kind: 'http-error', status: 503, code: 'model_not_found', message: 'no available channel'
      })
      expect(await failure(client.create(MI, createBody())))
        .toMatchObject({ code: 'COMET_model_not_found', retryable: true, maybeCreated: true })
    })

    it('rate-limit: retryable after Retry-After, certainly not created', async () => {
      const ext = randomUUID()
      sim.inject({ on: 'create', kind: 'rate-limit', retryAfter: 2 })
      const err = await failure(client.create(MI, createBody(ext)))
      expect(err).toMatchObject({
        code: 'UPSTREAM_RATE_LIMITED', retryable: true, maybeCreated: false, httpStatus: 429, retryAfterMs: 2000
      })
      expect(sim.acceptedFor(ext)).toBe(0)
    })

    it('kling-error 1301: not retryable, message carried', async () => {
      sim.inject({ on: 'create', kind: 'kling-error', code: 1301, message: 'content security policy triggered' })
      const err = await failure(client.create(MI, createBody()))
      expect(err).toMatchObject({ code: 'KLING_1301', retryable: false, maybeCreated: false, httpStatus: 400 })
      expect(err.message).toBe('content security policy triggered')
    })

    it('kling-error 1301 with HTTP 200 is still an error', async () => {
      sim.inject({ on: 'create', kind: 'kling-error', code: 1301, status: 200, message: 'risk' })
      expect(await failure(client.create(MI, createBody())))
        .toMatchObject({ code: 'KLING_1301', retryable: false, maybeCreated: false, httpStatus: 200 })
    })

    it('kling-error 1303 with HTTP 429: retryable, not created', async () => {
      sim.inject({
        on: 'create', kind: 'kling-error', code: 1303, status: 429, message: 'parallel task over resource pack limit'
      })
      expect(await failure(client.create(MI, createBody())))
        .toMatchObject({ code: 'KLING_1303', retryable: true, maybeCreated: false, httpStatus: 429 })
    })

    it('kling-error 5001 with HTTP 503: retryable, may have created', async () => {
      sim.inject({ on: 'create', kind: 'kling-error', code: 5001, status: 503, message: 'maintenance' })
      expect(await failure(client.create(MI, createBody())))
        .toMatchObject({ code: 'KLING_5001', retryable: true, maybeCreated: true })
    })

    it('reset: retryable; may have created on create only', async () => {
      sim.inject({ on: 'create', kind: 'reset' })
      expect(await failure(client.create(MI, createBody())))
        .toMatchObject({ code: 'UPSTREAM_RESET', retryable: true, maybeCreated: true, httpStatus: null })
      sim.inject({ on: 'query', kind: 'reset' })
      expect(await failure(client.query(MI, '1')))
        .toMatchObject({ code: 'UPSTREAM_RESET', retryable: true, maybeCreated: false })
    })

    it('hang: rejects with UPSTREAM_TIMEOUT well inside 2 s', async () => {
      sim.inject({ on: 'create', kind: 'hang' })
      const started = Date.now()
      const err = await failure(fast.create(MI, createBody()))
      const took = Date.now() - started
      expect(err).toMatchObject({ code: 'UPSTREAM_TIMEOUT', retryable: true, maybeCreated: true })
      expect(took).toBeGreaterThanOrEqual(250)
      expect(took).toBeLessThan(1000)
    })

    it('hang on query: timeout, not "created"', async () => {
      sim.inject({ on: 'query', kind: 'hang' })
      expect(await failure(fast.query(MI, '1')))
        .toMatchObject({ code: 'UPSTREAM_TIMEOUT', retryable: true, maybeCreated: false })
    })

    it('accept-then-hang: timeout, may have created, and the task exists once', async () => {
      const ext = randomUUID()
      sim.inject({ on: 'create', kind: 'accept-then-hang' })
      const err = await failure(fast.create(MI, createBody(ext)))
      expect(err).toMatchObject({ code: 'UPSTREAM_TIMEOUT', retryable: true, maybeCreated: true })
      expect(sim.acceptedFor(ext)).toBe(1)
      // The reconciliation a caller does next finds it.
      expect((await client.query(MI, ext))?.externalTaskId).toBe(ext)
    })

    it('accept-then-reset: reset, may have created, and the task exists once', async () => {
      const ext = randomUUID()
      sim.inject({ on: 'create', kind: 'accept-then-reset' })
      expect(await failure(client.create(MI, createBody(ext))))
        .toMatchObject({ code: 'UPSTREAM_RESET', retryable: true, maybeCreated: true })
      expect(sim.acceptedFor(ext)).toBe(1)
    })

    it('an HTML 200 is UPSTREAM_NOT_JSON, not retryable', async () => {
      sim.inject({ on: 'create', kind: 'html' })
      expect(await failure(client.create(MI, createBody())))
        .toMatchObject({ code: 'UPSTREAM_NOT_JSON', retryable: false, httpStatus: 200 })
      sim.inject({ on: 'query', kind: 'html', status: 404 })
      expect(await failure(client.query(MI, '1')))
        .toMatchObject({ code: 'UPSTREAM_NOT_JSON', retryable: false, maybeCreated: false, httpStatus: 404 })
    })

    it('the client still works after every fault (sockets were freed)', async () => {
      const ext = randomUUID()
      const results = await Promise.all(
        Array.from({ length: 20 }, async () => await client.query(MI, 'missing-' + randomUUID()))
      )
      expect(results.every(r => r === null)).toBe(true)
      expect((await client.create(MI, createBody(ext))).externalTaskId).toBe(ext)
    })
  })

  describe('answers only the scripted server gives', () => {
    it('a redirect is an error and is not followed', async () => {
      const creates = sim.counts.creates
      scripted.handler = (_req, res) => {
        res.writeHead(301, { location: `${sim.baseUrl}/kling/v1/videos/multi-image2video` }).end('moved')
      }
      expect(await failure(viaScript.create(MI, createBody())))
        .toMatchObject({ code: 'UPSTREAM_REDIRECT', retryable: false, maybeCreated: false, httpStatus: 301 })
      scripted.handler = (_req, res) => {
        res.writeHead(307, { location: `${sim.baseUrl}/kling/v1/videos/multi-image2video/1` }).end()
      }
      expect(await failure(viaScript.query(MI, '1'))).toMatchObject({ code: 'UPSTREAM_REDIRECT', retryable: false })
      expect(sim.counts.creates).toBe(creates)
    })

    it('code 0 without a task id: retryable, may have created', async () => {
      scripted.json(200, { code: 0, message: 'SUCCEED', data: {} })
      expect(await failure(viaScript.create(MI, createBody())))
        .toMatchObject({ code: 'UPSTREAM_NO_TASK_ID', retryable: true, maybeCreated: true })
      scripted.json(200, { code: 0, message: 'SUCCEED', data: { task_id: '' } })
      expect(await failure(viaScript.create(MI, createBody()))).toMatchObject({ code: 'UPSTREAM_NO_TASK_ID' })
    })

    it('an HTML 502 from a proxy is a retryable 5xx, not a config error', async () => {
      scripted.handler = (_req, res) => {
        res.writeHead(502, { 'content-type': 'text/html' }).end('<html>Bad gateway</html>')
      }
      expect(await failure(viaScript.create(MI, createBody())))
        .toMatchObject({ code: 'UPSTREAM_HTTP_502', retryable: true, maybeCreated: true })
    })

    it('Retry-After as an HTTP-date', async () => {
      const at = new Date(Date.now() + 30_000).toUTCString()
      scripted.json(429, { error: { message: 'slow down', type: 'comet_api_error', code: '' } }, { 'retry-after': at })
      const err = await failure(viaScript.create(MI, createBody()))
      expect(err.code).toBe('UPSTREAM_RATE_LIMITED')
      expect(err.retryAfterMs).toBeGreaterThan(25_000)
      expect(err.retryAfterMs).toBeLessThanOrEqual(30_000)
    })

    it('a body over 1 MiB fails without being read whole', async () => {
      scripted.handler = (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end('{"code":0,"data":{"task_id":"1","pad":"' + 'x'.repeat(2 * 1024 * 1024) + '"}}')
      }
      expect(await failure(viaScript.create(MI, createBody())))
        .toMatchObject({ code: 'UPSTREAM_BODY_TOO_LARGE', retryable: false, maybeCreated: true })
      scripted.handler = (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(5 * 1024 * 1024) })
        res.write('{')
      }
      expect(await failure(viaScript.query(MI, '1')))
        .toMatchObject({ code: 'UPSTREAM_BODY_TOO_LARGE', maybeCreated: false })
    })

    it('headers then a stalled body: timeout inside the deadline', async () => {
      scripted.handler = (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.write('{"code":0,')
      }
      const started = Date.now()
      expect(await failure(viaScript.create(MI, createBody())))
        .toMatchObject({ code: 'UPSTREAM_TIMEOUT', retryable: true, maybeCreated: true })
      expect(Date.now() - started).toBeLessThan(1800)
    })

    it('a slow trickle cannot stretch a call past its deadline', async () => {
      scripted.handler = (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' })
        const t = setInterval(() => { if (!res.destroyed) res.write(' ') }, 100)
        res.on('close', () => clearInterval(t))
      }
      const started = Date.now()
      expect(await failure(viaScript.query(MI, '1'))).toMatchObject({ code: 'UPSTREAM_TIMEOUT' })
      expect(Date.now() - started).toBeLessThan(1800)
    })

    it('connection refused: retryable, certainly not created', async () => {
      const probe = createServer()
      await new Promise<void>(resolve => probe.listen(0, '127.0.0.1', resolve))
      const port = (probe.address() as AddressInfo).port
      await new Promise<void>(resolve => probe.close(() => resolve()))
      const dead = new CometApiAdapter({ baseUrl: `http://127.0.0.1:${port}`, apiKey: KEY, timeoutMs: 2000 })
      try {
        expect(await failure(dead.create(MI, createBody())))
          .toMatchObject({ code: 'UPSTREAM_UNREACHABLE', retryable: true, maybeCreated: false, httpStatus: null })
      } finally {
        await dead.close()
      }
    })

    it('an upstream message that echoes the key is redacted', async () => {
      scripted.json(401, {
        error: { message: `invalid token ${KEY} (request id: abc123)`, type: 'comet_api_error', code: '' }
      })
      const err = await failure(viaScript.create(MI, createBody()))
      expect(err.message).toBe('invalid token [redacted] (request id: abc123)')
      expect(err.requestId).toBe('abc123')
      scripted.json(400, { code: 1201, message: `bad header Bearer ${KEY}` })
      expect((await failure(viaScript.create(MI, createBody()))).message).not.toContain(KEY)
    })

    it('a base path in baseUrl is kept', async () => {
      const prefixed = new CometApiAdapter({ baseUrl: `${scripted.url}/comet/`, apiKey: KEY, timeoutMs: 1000 })
      try {
        scripted.json(400, { code: 1201, message: 'Task not found by id/external id: 7' })
        expect(await prefixed.query(MI, '7')).toBeNull()
        expect(scripted.requests.at(-1)?.url).toBe('/comet/kling/v1/videos/multi-image2video/7')
      } finally {
        await prefixed.close()
      }
    })
  })

  it('the API key appears in no error message, JSON or inspection', () => {
    expect(seen.length).toBeGreaterThan(25)
    for (const err of seen) {
      const e = err as UpstreamError
      expect(e.message).not.toContain(KEY)
      expect(JSON.stringify(e)).not.toContain(KEY)
      expect(inspect(e, { depth: 10, showHidden: true })).not.toContain(KEY)
      expect(String(e.stack)).not.toContain(KEY)
    }
    expect(JSON.stringify(client)).not.toContain(KEY)
    expect(inspect(client, { depth: 10 })).not.toContain(KEY)
  })

  it('rejects bad options without echoing the key', () => {
    expect(() => new CometApiAdapter({ baseUrl: 'ftp://x', apiKey: KEY, timeoutMs: 1 })).toThrow(/http/)
    try {
      // eslint-disable-next-line no-new
      new CometApiAdapter({ baseUrl: 'http://x', apiKey: `${KEY}\n`, timeoutMs: 1 })
      expect.unreachable()
    } catch (err) {
      expect(String(err)).not.toContain(KEY)
    }
  })
})

describe('parseTask', () => {
  const video = { id: 'v1', url: 'https://cdn.example/v1.mp4', duration: '5.1' }

  it('reads the flat Kling envelope', () => {
    expect(parseTask({
      code: 0,
      message: 'SUCCEED',
      request_id: '9ab376fc',
      data: {
        task_id: '878106242831892487',
        task_status: 'succeed',
        task_status_msg: '',
        task_info: { external_task_id: 'ext-1' },
        task_result: { videos: [video] },
        created_at: 1722769557708,
        updated_at: 1722769557709
      }
    })).toEqual({
      taskId: '878106242831892487',
      status: 'succeed',
      statusMsg: null,
      externalTaskId: 'ext-1',
      videos: [video],
      createdAt: 1722769557708,
      updatedAt: 1722769557709
    })
  })

  it('reads a processing task with empty task_info and task_result', () => {
    expect(parseTask({
      code: 0, message: 'SUCCEED', data: { task_id: '1', task_info: {}, task_result: {}, task_status: 'processing' }
    }))
      .toMatchObject({ taskId: '1', status: 'processing', externalTaskId: null, videos: [], createdAt: null })
  })

  it('reads the nested new-api shape, preferring Kling\'s task_status', () => {
    expect(parseTask({
      code: 'success',
      data: {
        task_id: 'task_x',
        status: 'SUCCESS',
        progress: '100%',
        data: { task_id: '861', task_status: 'succeed', task_result: { videos: [video] } }
      }
    }))
      .toMatchObject({ taskId: '861', status: 'succeed', videos: [video] })
  })

  it('falls back to the wrapper\'s status, mapping SUCCESS/FAILURE/IN_PROGRESS', () => {
    expect(parseTask({ data: { task_id: 't', status: 'IN_PROGRESS', progress: '50%' } })?.status).toBe('processing')
    expect(parseTask({ data: { task_id: 't', status: 'SUCCESS' } })?.status).toBe('succeed')
    expect(parseTask({ data: { task_id: 't', status: 'FAILURE', fail_reason: 'risk control' } }))
      .toMatchObject({ status: 'failed', statusMsg: 'risk control' })
    expect(parseTask({ data: { task_id: 't', status: 'queued' } })?.status).toBe('submitted')
    expect(parseTask({ data: { task_id: 't', status: 'NOT_START' } })?.status).toBe('submitted')
    expect(parseTask({ data: { task_id: 't', status: 'UNKNOWN', data: { task_status: 'processing' } } })?.status)
      .toBe('processing')
  })

  it('reads a legacy callback body (flat, no envelope)', () => {
    expect(parseTask({
      task_id: '861309198188019719',
      task_status: 'succeed',
      task_status_msg: '',
      created_at: 1722769557708,
      updated_at: 1722769557708,
      final_unit_deduction: '1',
      task_info: { external_task_id: 'job-1' },
      task_result: { videos: [{ id: 'v', url: 'https://cdn.example/v.mp4', duration: '5' }] }
    })).toEqual({ taskId: '861309198188019719', status: 'succeed', statusMsg: null, externalTaskId: 'job-1', videos: [{ id: 'v', url: 'https://cdn.example/v.mp4', duration: '5' }], createdAt: 1722769557708, updatedAt: 1722769557708 })
    expect(parseTask({ task_id: '1', task_status: 'failed', task_status_msg: 'content risk control' }))
      .toMatchObject({ status: 'failed', statusMsg: 'content risk control' })
  })

  it('reads a new-standard callback body {id, status: succeeded}', () => {
    expect(parseTask({ id: 'abc', status: 'succeeded', message: '', external_id: 'job-2', create_time: 1722769557, update_time: 1722769560, outputs: [{ url: 'https://cdn.example/o.mp4', duration: 5 }] }))
      .toEqual({ taskId: 'abc', status: 'succeed', statusMsg: null, externalTaskId: 'job-2', videos: [{ id: 'abc-0', url: 'https://cdn.example/o.mp4', duration: '5' }], createdAt: 1722769557000, updatedAt: 1722769560000 })
    expect(parseTask({ id: 'abc', status: 'failed', message: 'policy' }))
      .toMatchObject({ status: 'failed', statusMsg: 'policy' })
  })

  it('turns numeric ids into strings and skips videos without a url', () => {
    expect(parseTask({ task_id: 123, task_status: 'succeed', task_result: { videos: [{ id: 7, url: '' }, { id: 8, url: 'https://x/8.mp4' }] } }))
      .toMatchObject({ taskId: '123', videos: [{ id: '8', url: 'https://x/8.mp4', duration: null }] })
  })

  it('is null for garbage', () => {
    const garbage = [
      null, undefined, 'x', 42, [], {}, { task_id: '1' }, { task_status: 'succeed' },
      { task_id: '1', task_status: 'weird' }, { task_id: '', task_status: 'succeed' },
      { task_id: {}, task_status: 'succeed' }, { code: 1201, message: 'not found', data: null },
      { error: { message: 'x' } }, { data: [{ task_id: '1', task_status: 'succeed' }] },
      { task_id: '1', task_status: 5 }
    ]
    for (const bad of garbage) {
      expect(parseTask(bad)).toBeNull()
    }
  })
})

describe('parseRetryAfter', () => {
  it('reads seconds and HTTP-dates', () => {
    expect(parseRetryAfter('2')).toBe(2000)
    expect(parseRetryAfter(['0'])).toBe(0)
    expect(parseRetryAfter(new Date(61_000).toUTCString(), 1_000)).toBe(60_000)
    expect(parseRetryAfter(new Date(0).toUTCString(), 1_000)).toBe(0)
    expect(parseRetryAfter(undefined)).toBeNull()
    expect(parseRetryAfter('soon')).toBeNull()
  })
})
