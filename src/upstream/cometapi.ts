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
  nonJsonError, parseRetryAfter, requestIdOf, safeCode, statusError, type AccountProblem, type HttpOptions,
  type Op, type Received, type UpstreamError
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

  /**
   * CometAPI's own shape (CometAPI's error-code guide) `{error: {message, type, code, param}}`, or the flat one the
   * new-api gateway family answers task routes with, `{code: "<word>", message, data}` (a string code; Kling's own
   * codes are numbers): null when the body is neither.
   */
  private gatewayError (op: Op, res: Received): UpstreamError | null {
    const { status, json } = res
    const e = gatewayBody(json)
    if (e === null) return null
    const cometCode = e.code === undefined || e.code === null ? '' : String(e.code).trim()
    const message = typeof e.message === 'string' && e.message !== '' ? e.message : `upstream answered HTTP ${status}`
    const account = accountProblem(status, cometCode, message)
    // Some resellers answer an empty wallet with a 429: the code says which it is.
    const code = status === 429 && account === null
      ? 'UPSTREAM_RATE_LIMITED'
      : cometCode !== '' ? `COMET_${safeCode(cometCode)}` : `UPSTREAM_HTTP_${status}`
    const retryAfterMs = parseRetryAfter(res.headers['retry-after'])
    const base = { code, message, httpStatus: status, retryAfterMs, requestId: requestIdOf(json), account }
    if (account !== null) return this.http.error(op, { ...base, retryable: false, maybeCreated: false })
    if (status === 429) return this.http.error(op, { ...base, retryable: true, maybeCreated: false })
    if (status >= 500) {
      // A 500 with `invalid_request` is CometAPI refusing the body: sending it again changes nothing.
      const fixable = cometCode === 'invalid_request'
      return this.http.error(op, { ...base, retryable: !fixable, maybeCreated: !fixable })
    }
    return this.http.error(op, { ...base, retryable: status === 408, maybeCreated: false })
  }

  /**
   * "No such task": CometAPI's or new-api's `task_not_exist` (or a not-found message) on a 4xx, in either shape, or
   * Kling's own answer.
   */
  protected isNotFound (res: Received): boolean {
    const { status, json } = res
    const e = gatewayBody(json)
    if (e === null) return klingNotFound(res)
    const code = typeof e.code === 'string' ? e.code : ''
    const message = typeof e.message === 'string' ? e.message : ''
    return (status === 200 || (status >= 400 && status < 500)) && status !== 401 && status !== 403 &&
      status !== 429 && (code === 'task_not_exist' || /task.{0,40}not (found|exist)/i.test(message))
  }
}

/** CometAPI's `error` object, or new-api's flat body with a word for a code; null for anything else. */
function gatewayBody (json: unknown): { code?: unknown, message?: unknown } | null {
  if (!isObject(json)) return null
  if (json.error !== undefined && json.error !== null) {
    return isObject(json.error) ? json.error : { message: json.error }
  }
  const flat = typeof json.code === 'string' && json.code.trim() !== '' && !/^\d+$/.test(json.code.trim()) &&
    json.code !== 'success'
  return flat ? { code: json.code, message: json.message } : null
}

/** new-api's quota codes (its `types` package): the account has no money or quota left. */
const BALANCE_CODES = new Set(['insufficient_user_quota', 'pre_consume_token_quota_failed', 'insufficient_quota',
  'quota_exhausted', 'free_model_blocked_no_quota', 'token_quota_exhausted'])
/** Codes that name our key or token (a channel's own key, `channel:invalid_key`, is CometAPI's, not ours). */
const KEY_CODES = new Set(['invalid_api_key', 'invalid_key', 'invalid_token', 'token_invalid', 'token_expired',
  'token_disabled', 'token_not_found', 'unauthorized', 'access_denied'])

const KEY_STATE = '(invalid|expired|revoked|disabled)'
const KEY_WORD = '(api[ _-]?key|token)'
/** "invalid token", "API key expired", "token revoked", … */
const KEY_MESSAGE = new RegExp(
  `\\b${KEY_WORD}\\b.{0,40}\\b${KEY_STATE}\\b|\\b${KEY_STATE}\\b.{0,40}\\b${KEY_WORD}\\b`, 'i')

/**
 * Whether a refusal is about the account rather than the task: the balance (by code or message, any status), or the
 * key (a 401, or a 403 whose code or message names the key or token). Null otherwise.
 */
function accountProblem (status: number, code: string, message: string): AccountProblem | null {
  if (BALANCE_CODES.has(code) || /quota is not enough|insufficient (user )?(quota|balance)/i.test(message)) {
    return 'balance'
  }
  if (status === 401) return 'key'
  return status === 403 && (KEY_CODES.has(code) || KEY_MESSAGE.test(message)) ? 'key' : null
}
