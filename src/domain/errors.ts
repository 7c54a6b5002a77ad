import { STATUS_CODES } from 'node:http'

/**
 * Every `code` the gateway answers or records itself, in one list: docs/API.md, "Error codes" documents each one
 * (test/docs.test.ts fails when one is missing), and `GatewayError` takes only these, so a new code cannot be
 * thrown without being listed here first. Upstream codes (`KLING_<n>`, `COMET_<code>`, `UPSTREAM_*` from
 * src/upstream/client.ts) pass through `task.error.code` as they come and are documented there by family.
 */
export const ERROR_CODES = [
  // Problem documents (the `code` of an error response).
  'INVALID_REQUEST', 'BAD_REQUEST', 'UNAUTHORIZED', 'NOT_FOUND', 'REFERENCE_TAKEN', 'NOT_CANCELABLE',
  'NOT_SUCCEEDED', 'CONTENT_NOT_READY', 'DELIVERY_PENDING', 'CONTENT_EXPIRED', 'RANGE_NOT_SATISFIABLE',
  'IDEMPOTENCY_KEY_REUSED', 'TOO_MANY_CALLBACKS', 'INTERNAL', 'UNAVAILABLE', 'NOT_HELD', 'UPSTREAM_TASK_UNKNOWN',
  // A per-caller limit (src/config/callers.ts): 429 with Retry-After, naming the limit and its value.
  'CALLER_LIMIT',
  // An admin key without the operator scope changing another caller's resource (it can see it, so 403, not 404).
  'OPERATOR_SCOPE_REQUIRED',
  // What Fastify or Node's HTTP parser refuse before a route runs (src/plugins/errors.ts maps their codes to these).
  'INVALID_JSON', 'UNSUPPORTED_MEDIA_TYPE', 'BODY_TOO_LARGE', 'URI_TOO_LONG', 'HEADERS_TOO_LARGE', 'REQUEST_TIMEOUT',
  // Content of a video whose upstream URL expired before it could be copied; also that video's `copy_error.code`.
  'UPSTREAM_URL_EXPIRED',
  // A task's `error.code` when the gateway, not upstream, ended it.
  'NOT_ACCEPTED', 'UPSTREAM_FAILED', 'UPSTREAM_DEADLINE', 'UPSTREAM_UNAVAILABLE', 'FAILED_BY_OPERATOR',
  // A held task's `attention.code` (src/jobs/hold.ts).
  'CREATE_UNCONFIRMED', 'DEADLINE_UNCONFIRMED'
] as const
export type ErrorCode = typeof ERROR_CODES[number]

/**
 * The members every problem document starts with (RFC 9457 and our code), in one place for the answers
 * (src/plugins/errors.ts) and the OpenAPI examples (src/schemas/common.ts), so the two cannot drift apart.
 */
export function problemFields (status: number, code: string, detail: string) {
  return {
    type: `urn:kling-gateway:problem:${code.toLowerCase()}`,
    title: STATUS_CODES[status] ?? 'Error',
    status,
    detail,
    code
  }
}

/** One field problem, pointing into the request with a JSON pointer (RFC 6901). */
export interface FieldError { pointer: string, detail: string, location?: 'body' | 'query' | 'params' | 'headers' }

/** Base of every error we throw on purpose: a stable SCREAMING_SNAKE code and the HTTP status it maps to. */
export class GatewayError extends Error {
  constructor (
    readonly code: ErrorCode,
    readonly statusCode: number,
    message: string,
    readonly errors?: FieldError[],
    readonly headers?: Record<string, string>,
    /** Extra problem members (RFC 9457 extensions), e.g. `limit` and `limit_value` of CALLER_LIMIT. */
    readonly extensions?: Record<string, string | number>
  ) {
    super(message)
    this.name = new.target.name
  }
}

export class InvalidRequest extends GatewayError {
  constructor (errors: FieldError[], message = `${errors.length} invalid field${errors.length === 1 ? '' : 's'}`) {
    super('INVALID_REQUEST', 400, message, errors)
  }
}

export class Unauthorized extends GatewayError {
  constructor () {
    super('UNAUTHORIZED', 401, 'a valid bearer API key is required', undefined, { 'www-authenticate': 'Bearer' })
  }
}

export class NotFound extends GatewayError {
  constructor (what: string) { super('NOT_FOUND', 404, `${what} not found`) }
}

export class Conflict extends GatewayError {
  constructor (code: ErrorCode, message: string) { super(code, 409, message) }
}

export class Unavailable extends GatewayError {
  constructor (message: string, retryAfterSeconds = 1) {
    super('UNAVAILABLE', 503, message, undefined, { 'retry-after': String(retryAfterSeconds) })
  }
}

/**
 * A per-caller limit reached (docs/API.md, "Per-caller limits"): 429, `Retry-After` in whole seconds (at least 1),
 * and the limit's name (a CALLER_LIMITS field) and value in the problem, so a caller can tell which one it hit.
 */
export class CallerLimitExceeded extends GatewayError {
  constructor (limit: string, value: number, retryAfterSeconds: number, detail?: string) {
    super('CALLER_LIMIT', 429, detail ?? `caller limit ${limit} (${value}) reached; retry after Retry-After`,
      undefined, { 'retry-after': String(Math.max(1, Math.ceil(retryAfterSeconds))) },
      { limit, limit_value: value })
  }
}

/**
 * An admin key (which sees every caller's resources, so a 404 would be a lie) asked to change another caller's:
 * that needs an operator key (OPERATOR_API_KEYS). Names the owner-independent fix, never the owner.
 */
export class OperatorScopeRequired extends GatewayError {
  constructor (what: string) {
    super('OPERATOR_SCOPE_REQUIRED', 403, `this ${what} belongs to another caller: an admin key may read it, ` +
      'only an operator key (OPERATOR_API_KEYS) may change it')
  }
}
