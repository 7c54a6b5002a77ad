/**
 * CometAPI's Kling routes (CometAPI's Kling docs): `POST /kling/v1/videos/<kind>` and `GET /kling/v1/videos/<kind>/
 * <id>` on COMETAPI_BASE_URL, `Authorization: Bearer <COMETAPI_KEY>` (the key as it is). CometAPI passes Kling's
 * bodies and envelopes through, so a failure comes in one of two shapes: CometAPI's own gateway error
 * `{error: {message, type, code, param}}`, or Kling's business error `{code, message, request_id}` (read with
 * Kling's table, kling.ts). The key lives in a private field and is scrubbed from every message.
 */
import type { UpstreamName } from '../config/index.ts'
import type { VideoKind } from '../domain/kinds.ts'
import { KlingWireAdapter } from './adapter.ts'
import {
  nonJsonError, parseRetryAfter, requestIdOf, safeCode, statusError, type HttpOptions, type Op, type Received,
  type UpstreamError
} from './client.ts'
import { klingCodeError, klingNotFound } from './kling.ts'
import { isObject } from './schemas.ts'

export interface CometApiOptions extends HttpOptions { apiKey: string }

function checked (opts: CometApiOptions): CometApiOptions {
  // Never echo the key, even when rejecting it.
  if (typeof opts.apiKey !== 'string' || opts.apiKey.length === 0 || /[\s\p{Cc}]/u.test(opts.apiKey)) {
    throw new TypeError('cometapi: apiKey must be a non-empty token without whitespace')
  }
  return opts
}

export class CometApiAdapter extends KlingWireAdapter {
  readonly name: UpstreamName = 'cometapi'
  readonly #apiKey: string

  constructor (opts: CometApiOptions) {
    super(checked(opts))
    this.#apiKey = opts.apiKey
  }

  protected path (kind: VideoKind): string {
    return `/kling/v1/videos/${kind}`
  }

  protected authorization (): string {
    return `Bearer ${this.#apiKey}`
  }

  protected secrets (): string[] {
    return [this.#apiKey]
  }

  protected classify (op: Op, res: Received): UpstreamError {
    return nonJsonError(this.http, op, res) ?? this.gatewayError(op, res) ?? klingCodeError(this.http, op, res) ??
      statusError(this.http, op, res)
  }

  /** CometAPI's own shape (CometAPI's error-code guide): null when the body is not it. */
  private gatewayError (op: Op, res: Received): UpstreamError | null {
    const { status, json } = res
    if (!isObject(json) || json.error === undefined || json.error === null) return null
    const e = isObject(json.error) ? json.error : { message: json.error }
    const cometCode = e.code === undefined || e.code === null ? '' : String(e.code).trim()
    const message = typeof e.message === 'string' && e.message !== '' ? e.message : `upstream answered HTTP ${status}`
    const code = status === 429
      ? 'UPSTREAM_RATE_LIMITED'
      : cometCode !== '' ? `COMET_${safeCode(cometCode)}` : `UPSTREAM_HTTP_${status}`
    const retryAfterMs = parseRetryAfter(res.headers['retry-after'])
    const base = { code, message, httpStatus: status, retryAfterMs, requestId: requestIdOf(json) }
    if (status === 429) return this.http.error(op, { ...base, retryable: true, maybeCreated: false })
    if (status >= 500) {
      // A 500 with `invalid_request` is CometAPI refusing the body: sending it again changes nothing.
      const fixable = cometCode === 'invalid_request'
      return this.http.error(op, { ...base, retryable: !fixable, maybeCreated: !fixable })
    }
    return this.http.error(op, { ...base, retryable: status === 408, maybeCreated: false })
  }

  /** "No such task": CometAPI's `task_not_exist` (or a not-found message) on a 4xx, or Kling's own answer. */
  protected isNotFound (res: Received): boolean {
    const { status, json } = res
    if (!isObject(json)) return false
    if (!isObject(json.error)) return klingNotFound(res)
    const code = typeof json.error.code === 'string' ? json.error.code : ''
    const message = typeof json.error.message === 'string' ? json.error.message : ''
    return status >= 400 && status < 500 && status !== 401 && status !== 403 && status !== 429 &&
      (code === 'task_not_exist' || /task.{0,40}not (found|exist)/i.test(message))
  }
}
