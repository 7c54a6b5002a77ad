/**
 * Kling's own API (Kling's API reference: authentication, error codes, the video endpoints): `POST /v1/videos/<kind>`
 * and `GET /v1/videos/<kind>/<id>` on KLING_BASE_URL, with `Authorization: Bearer <JWT>`.
 *
 * The JWT is HS256 over `{iss: access key, exp: now + 30 min, nbf: now - 5 s}`, signed with the secret key by
 * node:crypto (no JWT library is a dependency, and this is all of it). One token is cached and replaced once less
 * than 5 minutes of it are left, so a token never expires on its way. If Kling still says the token is expired or not
 * yet valid (1004/1003: a clock jump, a skewed clock), that token is dropped and the error is retryable: the next
 * attempt signs a fresh one. The access key, the secret and every token stay in private fields and are scrubbed from
 * error messages.
 *
 * Kling's error table is also what CometAPI relays from Kling, so cometapi.ts reads Kling's codes with it.
 */
import { createHmac } from 'node:crypto'
import type { VideoKind } from '../domain/kinds.ts'
import { KlingWireAdapter } from './adapter.ts'
import {
  nonJsonError, parseRetryAfter, requestIdOf, statusError, type AccountProblem, type HttpOptions, type Op,
  type Received, type UpstreamError, type UpstreamHttp
} from './client.ts'
import { isObject } from './schemas.ts'

const TOKEN_LIFETIME_S = 30 * 60
/** `nbf` a little in the past, as Kling's reference does, so a clock slightly ahead of Kling's is accepted. */
const NOT_BEFORE_S = 5
/** A cached token with less than this left is replaced before a request. */
export const RENEW_BEFORE_S = 5 * 60
/** Kling's "Authorization is not yet valid" and "has expired": a fresh token fixes both. */
const TOKEN_TIME_CODES = new Set([1003, 1004])

export interface Retry { retryable: boolean, maybeCreated: boolean, account?: AccountProblem | null }

/** What a Kling business code says about trying again (Kling's error codes; `status` for codes it does not list). */
export function klingRetry (code: number, status: number): Retry {
  // Rate or concurrency limit: the request was refused, and later it is not.
  if (code === 1302 || code === 1303) return { retryable: true, maybeCreated: false }
  // Internal error, maintenance, backlog timeout: it may have been taken before it failed.
  if (code >= 5000 && code <= 5002) return { retryable: true, maybeCreated: true }
  // Auth (1000-1004) and the account (1100 abnormal, 1101 arrears, 1102 resource pack exhausted): about every task,
  // not this one, so the submit queue pauses on them instead of failing tasks.
  if (code >= 1000 && code <= 1004) return { retryable: false, maybeCreated: false, account: 'key' }
  if (code >= 1100 && code <= 1102) return { retryable: false, maybeCreated: false, account: 'account' }
  // Parameters, policy: sending it again changes nothing.
  if (code >= 1000 && code <= 1304) return { retryable: false, maybeCreated: false }
  if (status >= 500) return { retryable: true, maybeCreated: true }
  return { retryable: status === 429 || status === 408, maybeCreated: false }
}

/** Kling's business shape `{code: <int ≠ 0>, message, request_id}` (HTTP 200 or Kling's status); null if not it. */
export function klingCodeError (http: UpstreamHttp, op: Op, res: Received, retry = klingRetry): UpstreamError | null {
  const { status, json } = res
  if (!isObject(json)) return null
  const code = typeof json.code === 'number'
    ? json.code
    : typeof json.code === 'string' && /^\d+$/.test(json.code) ? Number(json.code) : null
  if (code === null || code === 0) return null
  const message = typeof json.message === 'string' && json.message !== '' ? json.message : `upstream error ${code}`
  return http.error(op, {
    code: `KLING_${code}`,
    message,
    httpStatus: status,
    retryAfterMs: parseRetryAfter(res.headers['retry-after']),
    requestId: requestIdOf(json),
    ...retry(code, status)
  })
}

/** Kling's "no such task": 1201/1203, or a not-found message, with HTTP 400/404 (or 200). */
export function klingNotFound (res: Received): boolean {
  const { status, json } = res
  if (!isObject(json) || (status !== 200 && status !== 400 && status !== 404)) return false
  const code = typeof json.code === 'number' ? json.code : Number(json.code)
  const message = typeof json.message === 'string' ? json.message : ''
  if (code === 0 || !Number.isFinite(code)) return false
  return code === 1201 || code === 1203 || /not (found|exist)/i.test(message)
}

const b64url = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url')

/** A Kling API token (Kling's API reference, "Authentication"): HS256 JWT; `expiresAt` in Unix seconds. */
export function signKlingToken (accessKey: string, secretKey: string, nowMs: number):
{ token: string, expiresAt: number } {
  const now = Math.floor(nowMs / 1000)
  const expiresAt = now + TOKEN_LIFETIME_S
  const claims = { iss: accessKey, exp: expiresAt, nbf: now - NOT_BEFORE_S }
  const unsigned = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`
  const signature = createHmac('sha256', secretKey).update(unsigned).digest('base64url')
  return { token: `${unsigned}.${signature}`, expiresAt }
}

export interface KlingAdapterOptions extends HttpOptions {
  accessKey: string
  secretKey: string
  /** Unix ms that tokens are signed and renewed by (default Date.now). */
  clock?: () => number
}

/** Checks the keys before anything is built; the messages never hold them. */
function checked (opts: KlingAdapterOptions): KlingAdapterOptions {
  const token = (v: unknown) => typeof v === 'string' && v.length > 0 && !/[\s\p{Cc}]/u.test(v)
  if (!token(opts.accessKey)) throw new TypeError('kling: accessKey must be a non-empty string without whitespace')
  if (typeof opts.secretKey !== 'string' || opts.secretKey.length === 0) {
    throw new TypeError('kling: secretKey must be a non-empty string')
  }
  return opts
}

export class KlingAdapter extends KlingWireAdapter {
  readonly name = 'kling'
  readonly #accessKey: string
  readonly #secretKey: string
  readonly #clock: () => number
  #current: { token: string, expiresAt: number } | null = null
  /** The last few tokens signed: an upstream message echoing a replaced one is scrubbed too. */
  readonly #signed: string[] = []

  constructor (opts: KlingAdapterOptions) {
    super(checked(opts))
    this.#accessKey = opts.accessKey
    this.#secretKey = opts.secretKey
    this.#clock = opts.clock ?? Date.now
  }

  protected path (kind: VideoKind): string {
    return `/v1/videos/${kind}`
  }

  protected authorization (): string {
    const now = this.#clock()
    if (this.#current === null || this.#current.expiresAt - RENEW_BEFORE_S <= now / 1000) {
      this.#current = signKlingToken(this.#accessKey, this.#secretKey, now)
      this.#signed.push(this.#current.token)
      if (this.#signed.length > 4) this.#signed.shift()
    }
    return `Bearer ${this.#current.token}`
  }

  protected secrets (): string[] {
    return [this.#secretKey, this.#accessKey, ...this.#signed]
  }

  protected classify (op: Op, res: Received): UpstreamError {
    return nonJsonError(this.http, op, res) ?? klingCodeError(this.http, op, res, (code, status) => {
      if (!TOKEN_TIME_CODES.has(code)) return klingRetry(code, status)
      // Kling refused the token's time window, not the request: forget the token, so the next attempt signs anew.
      this.#current = null
      return { retryable: true, maybeCreated: false }
    }) ?? statusError(this.http, op, res)
  }

  protected isNotFound (res: Received): boolean {
    return klingNotFound(res)
  }
}
