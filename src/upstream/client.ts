/**
 * The only code that talks to CometAPI's Kling multi-image2video route (docs/DESIGN.md, "Upstream: CometAPI's Kling
 * route").
 *
 * Every call has one deadline (`timeoutMs`) enforced twice: undici's headers/body timeouts and an AbortSignal over
 * the whole call, body included. Redirects are never followed. Response bodies are capped and always consumed or
 * destroyed. Every failure becomes an `UpstreamError` that says whether trying again is worth it and whether a
 * create may have made a task anyway. The API key lives in a private field and is scrubbed from every message.
 */
import { Agent, type Dispatcher } from 'undici'
import { idString, isObject, parseJsonKeepingIds, parseTask, type UpstreamTask } from './schemas.ts'

export { parseTask, normalizeStatus } from './schemas.ts'
export type { KlingStatus, UpstreamTask, UpstreamVideo, MultiImage2VideoRequest, KlingEnvelope, CometErrorBody, KlingTaskWire } from './schemas.ts'

export const CREATE_PATH = '/kling/v1/videos/multi-image2video'
const DEFAULT_MAX_BODY_BYTES = 1024 * 1024
const MAX_MESSAGE_CHARS = 500

export interface UpstreamErrorInit {
  code: string
  message: string
  retryable: boolean
  maybeCreated?: boolean
  httpStatus?: number | null
  retryAfterMs?: number | null
  requestId?: string | null
}

/** Why a call failed, classified. Carries no cause, headers or body: nothing in it can hold the key. */
export class UpstreamError extends Error {
  /** Worth trying again later. */
  readonly retryable: boolean
  /** For create: the request may have reached upstream and made a task. Always false for query. */
  readonly maybeCreated: boolean
  /** e.g. UPSTREAM_TIMEOUT, UPSTREAM_RESET, UPSTREAM_HTTP_503, UPSTREAM_RATE_LIMITED, KLING_1301, COMET_insufficient_user_quota. */
  readonly code: string
  readonly httpStatus: number | null
  /** From Retry-After (seconds or HTTP-date) when the response had one. */
  readonly retryAfterMs: number | null
  /** Kling's `request_id`, or the one CometAPI embeds in its message; for support tickets. */
  readonly requestId: string | null

  constructor (init: UpstreamErrorInit) {
    super(init.message)
    this.name = 'UpstreamError'
    this.code = init.code
    this.retryable = init.retryable
    this.maybeCreated = init.maybeCreated ?? false
    this.httpStatus = init.httpStatus ?? null
    this.retryAfterMs = init.retryAfterMs ?? null
    this.requestId = init.requestId ?? null
  }

  toJSON (): Record<string, unknown> {
    return { name: this.name, code: this.code, message: this.message, retryable: this.retryable, maybeCreated: this.maybeCreated, httpStatus: this.httpStatus, retryAfterMs: this.retryAfterMs, requestId: this.requestId }
  }
}

export interface UpstreamClientOptions {
  baseUrl: string
  apiKey: string
  /** Deadline of every call, connect to last body byte. */
  timeoutMs: number
  /** Sockets to the upstream at most (default 64). */
  connections?: number
  /** Largest response body read (default 1 MiB); a larger one fails the call. */
  maxBodyBytes?: number
}

/** Retry-After as ms: delta-seconds or an HTTP-date; null when absent or unreadable. */
export function parseRetryAfter (value: string | string[] | undefined, now = Date.now()): number | null {
  const v = Array.isArray(value) ? value[0] : value
  if (v === undefined) return null
  const s = v.trim()
  if (/^\d+(\.\d+)?$/.test(s)) return Math.round(Number(s) * 1000)
  const at = Date.parse(s)
  return Number.isNaN(at) ? null : Math.max(0, at - now)
}

type Op = 'create' | 'query'

interface Received { status: number, headers: Dispatcher.ResponseData['headers'], json: unknown }

/** What undici or node reports, looked for on the error, its cause and an AggregateError's first error. */
function errorCode (err: unknown): string {
  const seen = new Set<unknown>()
  let cur: unknown = err
  while (isObject(cur) && !seen.has(cur)) {
    seen.add(cur)
    if (typeof cur.code === 'string' && cur.code !== '') return cur.code
    if (Array.isArray(cur.errors) && cur.errors.length > 0) cur = cur.errors[0]
    else cur = cur.cause
  }
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) return err.name
  return ''
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EAI_NODATA', 'EAI_NONAME', 'EHOSTUNREACH', 'EHOSTDOWN', 'ENETUNREACH', 'ENETDOWN', 'EADDRNOTAVAIL'])
const TIMEOUT = new Set(['TimeoutError', 'AbortError', 'UND_ERR_ABORTED', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT'])
const RESET = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH'])

export class UpstreamClient {
  readonly baseUrl: string
  readonly timeoutMs: number
  readonly #apiKey: string
  readonly #origin: string
  readonly #prefix: string
  readonly #agent: Agent
  readonly #maxBody: number

  constructor (opts: UpstreamClientOptions) {
    let url: URL
    try { url = new URL(opts.baseUrl) } catch { throw new TypeError('UpstreamClient: baseUrl is not a URL') }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError('UpstreamClient: baseUrl must be http(s)')
    if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') throw new TypeError('UpstreamClient: baseUrl must have no credentials, query or fragment')
    // Never echo the key, even when rejecting it.
    if (typeof opts.apiKey !== 'string' || opts.apiKey.length === 0 || /[\s\p{Cc}]/u.test(opts.apiKey)) throw new TypeError('UpstreamClient: apiKey must be a non-empty token without whitespace')
    if (!Number.isInteger(opts.timeoutMs) || opts.timeoutMs <= 0) throw new TypeError('UpstreamClient: timeoutMs must be a positive integer')

    this.#origin = url.origin
    this.#prefix = url.pathname.replace(/\/+$/, '')
    this.baseUrl = this.#origin + this.#prefix
    this.#apiKey = opts.apiKey
    this.timeoutMs = opts.timeoutMs
    this.#maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES
    this.#agent = new Agent({
      connections: opts.connections ?? 64,
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
      // Shorter than the deadline, so a connect that never finishes is told apart from a request that was sent.
      connectTimeout: Math.min(10_000, Math.max(50, Math.floor(opts.timeoutMs / 2))),
      keepAliveTimeout: 4_000,
      keepAliveMaxTimeout: 30_000
    })
  }

  /**
   * POST /kling/v1/videos/multi-image2video. Success only when HTTP 2xx AND `code === 0` AND `data.task_id` is a
   * non-empty string (or a number, turned into a string).
   */
  async create (body: Record<string, unknown>): Promise<UpstreamTask> {
    const res = await this.#send('create', 'POST', CREATE_PATH, JSON.stringify(body))
    const json = res.json
    if (res.status >= 200 && res.status < 300 && isObject(json) && isSuccessCode(json.code) && !isObject(json.error)) {
      const data = isObject(json.data) ? json.data : {}
      const taskId = idString(data.task_id)
      if (taskId === null) {
        throw this.#error('create', { code: 'UPSTREAM_NO_TASK_ID', message: 'upstream reported success without a task id', retryable: true, maybeCreated: true, httpStatus: res.status, requestId: requestIdOf(json) })
      }
      const parsed = parseTask({ ...data, task_id: taskId })
      const bodyExternal = typeof body.external_task_id === 'string' ? body.external_task_id : null
      return {
        taskId,
        status: parsed?.status ?? 'submitted',
        statusMsg: parsed?.statusMsg ?? null,
        externalTaskId: parsed?.externalTaskId ?? bodyExternal,
        videos: parsed?.videos ?? [],
        createdAt: parsed?.createdAt ?? null,
        updatedAt: parsed?.updatedAt ?? null
      }
    }
    throw this.#classify('create', res)
  }

  /**
   * GET /kling/v1/videos/multi-image2video/{id}; `id` is a task id or an external_task_id. Null when upstream says
   * there is no such task.
   */
  async query (id: string): Promise<UpstreamTask | null> {
    if (typeof id !== 'string' || id.length === 0 || id.length > 256) {
      throw new UpstreamError({ code: 'UPSTREAM_BAD_ID', message: 'task id must be a non-empty string of at most 256 characters', retryable: false })
    }
    const res = await this.#send('query', 'GET', `${CREATE_PATH}/${encodeURIComponent(id)}`, undefined)
    const json = res.json
    // new-api's wrapper says `code: "success"`; Kling's says 0.
    if (res.status >= 200 && res.status < 300 && isObject(json) && !isObject(json.error) && (json.code === undefined || isSuccessCode(json.code) || json.code === 'success')) {
      const task = parseTask(json)
      if (task !== null) return task
      throw this.#error('query', { code: 'UPSTREAM_BAD_RESPONSE', message: 'upstream answered without a recognisable task', retryable: false, httpStatus: res.status, requestId: requestIdOf(json) })
    }
    if (isNotFound(res)) return null
    throw this.#classify('query', res)
  }

  async close (): Promise<void> {
    await this.#agent.close()
  }

  /** One request under the deadline; the body read (capped) as text and, if it is JSON, parsed. */
  async #send (op: Op, method: 'GET' | 'POST', path: string, body: string | undefined): Promise<Received> {
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.#apiKey}`,
      accept: 'application/json',
      'user-agent': 'kling-gateway'
    }
    if (body !== undefined) headers['content-type'] = 'application/json'
    const signal = AbortSignal.timeout(this.timeoutMs)
    let res: Dispatcher.ResponseData
    try {
      res = await this.#agent.request({ origin: this.#origin, path: this.#prefix + path, method, headers, body, signal, headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs })
    } catch (err) {
      throw this.#transportError(op, err)
    }

    const status = res.statusCode
    if (status >= 300 && status < 400) {
      discard(res.body)
      throw new UpstreamError({ code: 'UPSTREAM_REDIRECT', message: `upstream answered HTTP ${status} (a redirect, not followed); check the base URL`, retryable: false, httpStatus: status })
    }

    let raw: Buffer | null
    try {
      raw = await readCapped(res.body, this.#maxBody, res.headers['content-length'])
    } catch (err) {
      throw this.#transportError(op, err)
    }
    if (raw === null) {
      throw this.#error(op, { code: 'UPSTREAM_BODY_TOO_LARGE', message: `upstream answered HTTP ${status} with a body over ${this.#maxBody} bytes`, retryable: status >= 500 || status === 429, maybeCreated: mayHaveCreated(status), httpStatus: status })
    }

    let json: unknown
    try {
      json = parseJsonKeepingIds(raw.toString('utf8'))
    } catch {
      json = undefined
    }
    return { status, headers: res.headers, json }
  }

  /** Builds an error for `op`: scrubs the key from the message; a query never "may have created". */
  #error (op: Op, init: UpstreamErrorInit): UpstreamError {
    return new UpstreamError({ ...init, message: this.#scrub(init.message), maybeCreated: op === 'create' && init.maybeCreated === true })
  }

  #scrub (message: string): string {
    // Redact before cutting, so no piece of the key survives at the cut.
    const m = message.split(this.#apiKey).join('[redacted]').replace(/\p{Cc}/gu, ' ')
    return m.length > MAX_MESSAGE_CHARS ? m.slice(0, MAX_MESSAGE_CHARS) + '…' : m
  }

  #transportError (op: Op, err: unknown): UpstreamError {
    const code = errorCode(err)
    const t = this.timeoutMs
    if (code === 'UND_ERR_CONNECT_TIMEOUT') return this.#error(op, { code: 'UPSTREAM_CONNECT_TIMEOUT', message: 'could not connect to upstream in time', retryable: true, maybeCreated: false })
    if (UNREACHABLE.has(code)) return this.#error(op, { code: 'UPSTREAM_UNREACHABLE', message: `could not connect to upstream (${code})`, retryable: true, maybeCreated: false })
    if (TIMEOUT.has(code)) return this.#error(op, { code: 'UPSTREAM_TIMEOUT', message: `upstream did not answer within ${t} ms`, retryable: true, maybeCreated: true })
    if (RESET.has(code) || code.startsWith('HPE_')) return this.#error(op, { code: 'UPSTREAM_RESET', message: `the connection to upstream broke (${code})`, retryable: true, maybeCreated: true })
    if (code === 'UND_ERR_DESTROYED' || code === 'UND_ERR_CLOSED') return this.#error(op, { code: 'UPSTREAM_CLIENT_CLOSED', message: 'the upstream client is closed', retryable: true, maybeCreated: true })
    if (code.startsWith('ERR_TLS') || code.includes('CERT') || code === 'EPROTO') return this.#error(op, { code: 'UPSTREAM_TLS', message: `TLS with upstream failed (${code})`, retryable: true, maybeCreated: false })
    if (code === 'UND_ERR_INVALID_ARG' || code === 'ERR_INVALID_ARG_TYPE' || code === 'ERR_INVALID_ARG_VALUE') return this.#error(op, { code: 'UPSTREAM_BAD_REQUEST', message: 'the request to upstream could not be built', retryable: false, maybeCreated: false })
    return this.#error(op, { code: 'UPSTREAM_ERROR', message: `the call to upstream failed${code === '' ? '' : ` (${code})`}`, retryable: true, maybeCreated: true })
  }

  /** A response that is not a success, as an UpstreamError (the codes: docs/API.md, "Error codes"). */
  #classify (op: Op, res: Received): UpstreamError {
    const { status, json } = res
    const retryAfterMs = parseRetryAfter(res.headers['retry-after'])
    const base = { httpStatus: status, retryAfterMs }

    if (json === undefined || !isObject(json)) {
      // A load balancer's HTML 5xx/429 is still a 5xx/429; anything else that is not a JSON object is misconfiguration.
      if (status >= 500) return this.#error(op, { ...base, code: `UPSTREAM_HTTP_${status}`, message: `upstream answered HTTP ${status}`, retryable: true, maybeCreated: true })
      if (status === 429) return this.#error(op, { ...base, code: 'UPSTREAM_RATE_LIMITED', message: 'upstream rate limit', retryable: true, maybeCreated: false })
      const kind = json === undefined ? 'a non-JSON body' : 'a JSON body that is not an object'
      return this.#error(op, { ...base, code: 'UPSTREAM_NOT_JSON', message: `upstream answered HTTP ${status} with ${kind}; check the base URL`, retryable: false, maybeCreated: mayHaveCreated(status) })
    }

    const requestId = requestIdOf(json)

    // CometAPI's gateway shape: {error:{message,type,code,param}}.
    if (json.error !== undefined && json.error !== null) {
      const e = isObject(json.error) ? json.error : { message: json.error }
      const cometCode = e.code === undefined || e.code === null ? '' : String(e.code).trim()
      const message = typeof e.message === 'string' && e.message !== '' ? e.message : `upstream answered HTTP ${status}`
      const code = status === 429 ? 'UPSTREAM_RATE_LIMITED' : cometCode !== '' ? `COMET_${safeCode(cometCode)}` : `UPSTREAM_HTTP_${status}`
      if (status === 429) return this.#error(op, { ...base, code, message, requestId, retryable: true, maybeCreated: false })
      if (status >= 500) {
        const fixable = cometCode === 'invalid_request'
        return this.#error(op, { ...base, code, message, requestId, retryable: !fixable, maybeCreated: !fixable })
      }
      return this.#error(op, { ...base, code, message, requestId, retryable: status === 408, maybeCreated: false })
    }

    // Kling's business shape: {code:<int>, message, request_id}, with HTTP 200 or Kling's own status.
    const klingCode = typeof json.code === 'number' ? json.code : typeof json.code === 'string' && /^\d+$/.test(json.code) ? Number(json.code) : null
    if (klingCode !== null && klingCode !== 0) {
      const message = typeof json.message === 'string' && json.message !== '' ? json.message : `upstream error ${klingCode}`
      const k = { ...base, code: `KLING_${klingCode}`, message, requestId }
      if (klingCode === 1302 || klingCode === 1303) return this.#error(op, { ...k, retryable: true, maybeCreated: false })
      if (klingCode >= 5000 && klingCode <= 5002) return this.#error(op, { ...k, retryable: true, maybeCreated: true })
      if (klingCode >= 1000 && klingCode <= 1304) return this.#error(op, { ...k, retryable: false, maybeCreated: false })
      // A code we do not know: go by the HTTP status.
      if (status >= 500) return this.#error(op, { ...k, retryable: true, maybeCreated: true })
      return this.#error(op, { ...k, retryable: status === 429 || status === 408, maybeCreated: false })
    }

    // JSON, but neither error shape.
    if (status >= 500) return this.#error(op, { ...base, code: `UPSTREAM_HTTP_${status}`, message: `upstream answered HTTP ${status}`, requestId, retryable: true, maybeCreated: true })
    if (status === 429) return this.#error(op, { ...base, code: 'UPSTREAM_RATE_LIMITED', message: 'upstream rate limit', requestId, retryable: true, maybeCreated: false })
    if (status >= 400) return this.#error(op, { ...base, code: `UPSTREAM_HTTP_${status}`, message: `upstream answered HTTP ${status}`, requestId, retryable: status === 408, maybeCreated: false })
    return this.#error(op, { ...base, code: 'UPSTREAM_BAD_RESPONSE', message: `upstream answered HTTP ${status} with an unrecognised body`, requestId, retryable: false, maybeCreated: true })
  }
}

function isSuccessCode (code: unknown): boolean {
  return code === 0 || code === '0'
}

/** A status after which a create may have made a task: a 2xx we could not read, or a 5xx. */
function mayHaveCreated (status: number): boolean {
  return (status >= 200 && status < 300) || status >= 500
}

function safeCode (code: string): string {
  return code.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 64)
}

function requestIdOf (json: unknown): string | null {
  if (!isObject(json)) return null
  if (typeof json.request_id === 'string' && json.request_id !== '') return json.request_id.slice(0, 128)
  const msg = isObject(json.error) ? json.error.message : undefined
  const m = typeof msg === 'string' ? /\(request id: ([^)\s]{1,128})\)/.exec(msg) : null
  return m === null ? null : m[1]
}

/** Upstream's "no such task": Kling 1201/1203 or a not-found message with HTTP 400/404 (or 200), or comet's task_not_exist. */
function isNotFound (res: Received): boolean {
  const { status, json } = res
  if (!isObject(json)) return false
  if (isObject(json.error)) {
    const code = typeof json.error.code === 'string' ? json.error.code : ''
    const message = typeof json.error.message === 'string' ? json.error.message : ''
    return status >= 400 && status < 500 && status !== 401 && status !== 403 && status !== 429 &&
      (code === 'task_not_exist' || /task.{0,40}not (found|exist)/i.test(message))
  }
  if (status !== 200 && status !== 400 && status !== 404) return false
  const code = typeof json.code === 'number' ? json.code : Number(json.code)
  const message = typeof json.message === 'string' ? json.message : ''
  if (code === 0 || !Number.isFinite(code)) return false
  return code === 1201 || code === 1203 || /not (found|exist)/i.test(message)
}

/** Reads at most `cap` bytes; null (and the stream destroyed) when the body is larger. */
async function readCapped (body: Dispatcher.ResponseData['body'], cap: number, contentLength: string | string[] | undefined): Promise<Buffer | null> {
  const declared = Number(Array.isArray(contentLength) ? contentLength[0] : contentLength)
  if (Number.isFinite(declared) && declared > cap) {
    discard(body)
    return null
  }
  const chunks: Buffer[] = []
  let size = 0
  try {
    for await (const chunk of body) {
      const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array)
      size += buf.length
      if (size > cap) {
        discard(body)
        return null
      }
      chunks.push(buf)
    }
  } catch (err) {
    discard(body)
    throw err
  }
  return Buffer.concat(chunks)
}

/** Drops a body we will not read: the socket is freed, and the AbortError destroying it raises goes nowhere. */
function discard (body: Dispatcher.ResponseData['body']): void {
  body.on('error', () => {})
  body.destroy()
}
