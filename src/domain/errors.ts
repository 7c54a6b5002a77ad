/** One field problem, pointing into the request with a JSON pointer (RFC 6901). */
export interface FieldError { pointer: string, detail: string, location?: 'body' | 'query' | 'params' | 'headers' }

/** Base of every error we throw on purpose: a stable SCREAMING_SNAKE code and the HTTP status it maps to. */
export class GatewayError extends Error {
  constructor (
    readonly code: string,
    readonly statusCode: number,
    message: string,
    readonly errors?: FieldError[],
    readonly headers?: Record<string, string>
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
  constructor () { super('UNAUTHORIZED', 401, 'a valid bearer API key is required', undefined, { 'www-authenticate': 'Bearer' }) }
}

export class NotFound extends GatewayError {
  constructor (what: string) { super('NOT_FOUND', 404, `${what} not found`) }
}

export class Conflict extends GatewayError {
  constructor (code: string, message: string) { super(code, 409, message) }
}

export class Unavailable extends GatewayError {
  constructor (message: string, retryAfterSeconds = 1) {
    super('UNAVAILABLE', 503, message, undefined, { 'retry-after': String(retryAfterSeconds) })
  }
}
