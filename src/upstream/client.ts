/**
 * The HTTP mechanics every upstream adapter shares (src/upstream/adapter.ts): what a call to CometAPI, to Kling or
 * to anything else needs regardless of its auth, paths and error table (docs/DESIGN.md, "Upstream: CometAPI's Kling
 * route", and the section after it).
 *
 * Every call has one deadline (`timeoutMs`) enforced twice: undici's headers/body timeouts and an AbortSignal over
 * the whole call, body included. Redirects are never followed. Response bodies are capped and always consumed or
 * destroyed. Every failure becomes an `UpstreamError` that says whether trying again is worth it and whether a
 * create may have made a task anyway. The secrets an adapter names (keys, tokens) are scrubbed from every message.
 */
import { Agent, type Dispatcher } from 'undici'
import { Readable } from 'node:stream'
import { isObject, parseJsonKeepingIds } from './schemas.ts'
import type { StreamedBody } from './adapter.ts'

export { parseTask, normalizeStatus } from './schemas.ts'
export type {
  KlingStatus, UpstreamTask, UpstreamVideo, MultiImage2VideoRequest, KlingEnvelope, CometErrorBody, KlingTaskWire
} from './schemas.ts'

const DEFAULT_MAX_BODY_BYTES = 1024 * 1024
const MAX_MESSAGE_CHARS = 500

/**
 * A refusal about the whole upstream account, not the task: every other create would get it too, so the submit
 * queue pauses instead of failing tasks (src/jobs/pause.ts). `key`: the key or token is refused (401, a 403 naming
 * the key, Kling 1000-1002); `balance`: no money or quota left; `account`: Kling's account codes 1100-1102.
 */
export const ACCOUNT_PROBLEMS = ['key', 'balance', 'account'] as const
export type AccountProblem = typeof ACCOUNT_PROBLEMS[number]

export interface UpstreamErrorInit {
  code: string
  message: string
  retryable: boolean
  maybeCreated?: boolean
  account?: AccountProblem | null
  httpStatus?: number | null
  retryAfterMs?: number | null
  requestId?: string | null
}

/** Why a call failed, classified. Carries no cause, headers or body: nothing in it can hold a key. */
export class UpstreamError extends Error {
  /** Worth trying again later. */
  readonly retryable: boolean
  /** For create: the request may have reached upstream and made a task. Always false for query. */
  readonly maybeCreated: boolean
  /** Not about this task but the whole account (key, balance): pause, do not fail. Null for anything else. */
  readonly account: AccountProblem | null
  /**
   * e.g. UPSTREAM_TIMEOUT, UPSTREAM_RESET, UPSTREAM_HTTP_503, UPSTREAM_RATE_LIMITED, KLING_1301,
   * COMET_insufficient_user_quota.
   */
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
    this.account = init.account ?? null
    this.httpStatus = init.httpStatus ?? null
    this.retryAfterMs = init.retryAfterMs ?? null
    this.requestId = init.requestId ?? null
  }

  toJSON (): Record<string, unknown> {
    const { name, code, message, retryable, maybeCreated, account, httpStatus, retryAfterMs, requestId } = this
    return { name, code, message, retryable, maybeCreated, account, httpStatus, retryAfterMs, requestId }
  }
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

export type Op = 'create' | 'query'

/** A response as the adapters classify it: the status, the headers and the body parsed as JSON (undefined if not). */
export interface Received { status: number, headers: Dispatcher.ResponseData['headers'], json: unknown }

export interface HttpOptions {
  /** Scheme, host and an optional base path; no credentials, query or fragment. */
  baseUrl: string
  /** Deadline of every call, connect to last body byte. */
  timeoutMs: number
  /** Sockets to the upstream at most (default 64). */
  connections?: number
  /** Largest response body read (default 1 MiB); a larger one fails the call. */
  maxBodyBytes?: number
}

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

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EAI_NODATA', 'EAI_NONAME', 'EHOSTUNREACH',
  'EHOSTDOWN', 'ENETUNREACH', 'ENETDOWN', 'EADDRNOTAVAIL'])
const TIMEOUT = new Set(['TimeoutError', 'AbortError', 'UND_ERR_ABORTED', 'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT'])
const RESET = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH'])
const BAD_ARGUMENT = new Set(['UND_ERR_INVALID_ARG', 'ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE'])

/**
 * One upstream origin: the connection pool, the deadline, the body cap and the scrubbing of secrets. Adapters
 * build the path and the headers (their auth) and classify what comes back; this never looks inside a body.
 */
export class UpstreamHttp {
  readonly baseUrl: string
  readonly timeoutMs: number
  readonly #origin: string
  readonly #prefix: string
  readonly #agent: Agent
  readonly #maxBody: number
  /** Read at every error, so tokens an adapter renews are covered too. */
  readonly #secrets: () => string[]

  constructor (opts: HttpOptions, secrets: () => string[]) {
    let url: URL
    try { url = new URL(opts.baseUrl) } catch { throw new TypeError('upstream: baseUrl is not a URL') }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError('upstream: baseUrl must be http(s)')
    if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') {
      throw new TypeError('upstream: baseUrl must have no credentials, query or fragment')
    }
    if (!Number.isInteger(opts.timeoutMs) || opts.timeoutMs <= 0) {
      throw new TypeError('upstream: timeoutMs must be a positive integer')
    }
    this.#origin = url.origin
    this.#prefix = url.pathname.replace(/\/+$/, '')
    this.baseUrl = this.#origin + this.#prefix
    this.timeoutMs = opts.timeoutMs
    this.#maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES
    this.#secrets = secrets
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

  /** One request under the deadline; the body read (capped) as text and, if it is JSON, parsed. */
  async send (op: Op, method: 'GET' | 'POST', path: string, body: string | StreamedBody | undefined,
    headers: Record<string, string>): Promise<Received> {
    const all: Record<string, string> = { accept: 'application/json', 'user-agent': 'kling-gateway', ...headers }
    if (body !== undefined) all['content-type'] = 'application/json'
    // A streamed body says its length up front: no chunked encoding, and undici checks every byte is sent.
    if (typeof body === 'object') all['content-length'] = String(body.length)
    const signal = AbortSignal.timeout(this.timeoutMs)
    let res: Dispatcher.ResponseData
    try {
      res = await this.#agent.request({
        origin: this.#origin,
        path: this.#prefix + path,
        method,
        headers: all,
        // In object mode the chunks reach the socket as they are (strings too); undici checks the length.
        body: typeof body === 'object' ? Readable.from(body.chunks()) : body,
        signal,
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs
      })
    } catch (err) {
      throw this.transportError(op, err)
    }

    const status = res.statusCode
    if (status >= 300 && status < 400) {
      discard(res.body)
      const message = `upstream answered HTTP ${status} (a redirect, not followed); check the base URL`
      throw new UpstreamError({ code: 'UPSTREAM_REDIRECT', message, retryable: false, httpStatus: status })
    }

    let raw: Buffer | null
    try {
      raw = await readCapped(res.body, this.#maxBody, res.headers['content-length'])
    } catch (err) {
      throw this.transportError(op, err)
    }
    if (raw === null) {
      const message = `upstream answered HTTP ${status} with a body over ${this.#maxBody} bytes`
      const retryable = status >= 500 || status === 429
      const maybeCreated = mayHaveCreated(status)
      throw this.error(op, { code: 'UPSTREAM_BODY_TOO_LARGE', message, retryable, maybeCreated, httpStatus: status })
    }

    let json: unknown
    try {
      json = parseJsonKeepingIds(raw.toString('utf8'))
    } catch {
      json = undefined
    }
    return { status, headers: res.headers, json }
  }

  /** Builds an error for `op`: the secrets scrubbed from the message; a query never "may have created". */
  error (op: Op, init: UpstreamErrorInit): UpstreamError {
    return new UpstreamError({
      ...init,
      message: this.#scrub(init.message),
      maybeCreated: op === 'create' && init.maybeCreated === true
    })
  }

  #scrub (message: string): string {
    // Redact before cutting, so no piece of a secret survives at the cut.
    let m = message
    for (const secret of this.#secrets()) if (secret.length > 0) m = m.split(secret).join('[redacted]')
    m = m.replace(/\p{Cc}/gu, ' ')
    return m.length > MAX_MESSAGE_CHARS ? m.slice(0, MAX_MESSAGE_CHARS) + '…' : m
  }

  transportError (op: Op, err: unknown): UpstreamError {
    const code = errorCode(err)
    const e = (c: string, message: string, retryable: boolean, maybeCreated: boolean) =>
      this.error(op, { code: c, message, retryable, maybeCreated })
    if (code === 'UND_ERR_CONNECT_TIMEOUT') {
      return e('UPSTREAM_CONNECT_TIMEOUT', 'could not connect to upstream in time', true, false)
    }
    if (UNREACHABLE.has(code)) return e('UPSTREAM_UNREACHABLE', `could not connect to upstream (${code})`, true, false)
    if (TIMEOUT.has(code)) {
      return e('UPSTREAM_TIMEOUT', `upstream did not answer within ${this.timeoutMs} ms`, true, true)
    }
    if (RESET.has(code) || code.startsWith('HPE_')) {
      return e('UPSTREAM_RESET', `the connection to upstream broke (${code})`, true, true)
    }
    if (code === 'UND_ERR_DESTROYED' || code === 'UND_ERR_CLOSED') {
      return e('UPSTREAM_CLIENT_CLOSED', 'the upstream client is closed', true, true)
    }
    if (code.startsWith('ERR_TLS') || code.includes('CERT') || code === 'EPROTO') {
      return e('UPSTREAM_TLS', `TLS with upstream failed (${code})`, true, false)
    }
    if (BAD_ARGUMENT.has(code)) {
      return e('UPSTREAM_BAD_REQUEST', 'the request to upstream could not be built', false, false)
    }
    return e('UPSTREAM_ERROR', `the call to upstream failed${code === '' ? '' : ` (${code})`}`, true, true)
  }

  async close (): Promise<void> {
    await this.#agent.close()
  }
}

/**
 * A failure whose body is not a JSON object: a load balancer's HTML 5xx/429 is still a 5xx/429; anything else is
 * misconfiguration. Null when the body is a JSON object, for the adapter's own error table.
 */
export function nonJsonError (http: UpstreamHttp, op: Op, res: Received): UpstreamError | null {
  const { status, json } = res
  if (isObject(json)) return null
  const base = { httpStatus: status, retryAfterMs: parseRetryAfter(res.headers['retry-after']) }
  const e = (code: string, message: string, retryable: boolean, maybeCreated: boolean) =>
    http.error(op, { ...base, code, message, retryable, maybeCreated })
  if (status >= 500) return e(`UPSTREAM_HTTP_${status}`, `upstream answered HTTP ${status}`, true, true)
  if (status === 429) return e('UPSTREAM_RATE_LIMITED', 'upstream rate limit', true, false)
  const what = json === undefined ? 'a non-JSON body' : 'a JSON body that is not an object'
  const message = `upstream answered HTTP ${status} with ${what}; check the base URL`
  return e('UPSTREAM_NOT_JSON', message, false, mayHaveCreated(status))
}

/** A JSON failure in no shape the adapter knows: judged by the HTTP status alone. */
export function statusError (http: UpstreamHttp, op: Op, res: Received): UpstreamError {
  const { status } = res
  const retryAfterMs = parseRetryAfter(res.headers['retry-after'])
  const base = { httpStatus: status, retryAfterMs, requestId: requestIdOf(res.json) }
  const e = (code: string, message: string, retryable: boolean, maybeCreated: boolean) =>
    http.error(op, { ...base, code, message, retryable, maybeCreated })
  const answered = `upstream answered HTTP ${status}`
  if (status >= 500) return e(`UPSTREAM_HTTP_${status}`, answered, true, true)
  if (status === 429) return e('UPSTREAM_RATE_LIMITED', 'upstream rate limit', true, false)
  // A 401 in any JSON shape is the key: every other request would get it too.
  if (status === 401) {
    const code = `UPSTREAM_HTTP_${status}`
    return http.error(op, { ...base, code, message: answered, retryable: false, account: 'key' })
  }
  if (status >= 400) return e(`UPSTREAM_HTTP_${status}`, answered, status === 408, false)
  return e('UPSTREAM_BAD_RESPONSE', `${answered} with an unrecognised body`, false, true)
}

export function isSuccessCode (code: unknown): boolean {
  return code === 0 || code === '0'
}

/** A status after which a create may have made a task: a 2xx we could not read, or a 5xx. */
export function mayHaveCreated (status: number): boolean {
  return (status >= 200 && status < 300) || status >= 500
}

/** An upstream's own error code, made safe for an error code and a metric label. */
export function safeCode (code: string): string {
  return code.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 64)
}

/** Kling's `request_id`, or the one CometAPI embeds in its error message. */
export function requestIdOf (json: unknown): string | null {
  if (!isObject(json)) return null
  if (typeof json.request_id === 'string' && json.request_id !== '') return json.request_id.slice(0, 128)
  const msg = isObject(json.error) ? json.error.message : undefined
  const m = typeof msg === 'string' ? /\(request id: ([^)\s]{1,128})\)/.exec(msg) : null
  return m === null ? null : m[1]
}

/** Reads at most `cap` bytes; null (and the stream destroyed) when the body is larger. */
async function readCapped (body: Dispatcher.ResponseData['body'], cap: number,
  contentLength: string | string[] | undefined): Promise<Buffer | null> {
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
