import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { GatewayError, problemFields, type ErrorCode, type FieldError } from '../domain/errors.ts'
import http, { STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'
import { isRedisUnavailable } from '../infra/redis.ts'
import { boundBodies, boundErrors, NOT_ACCEPTED, segment } from './bounds.ts'

/** Fastify's validationContext → the `location` a field error names. */
export const LOCATIONS: Record<string, FieldError['location']> = {
  body: 'body', querystring: 'query', params: 'params', headers: 'headers'
}

/** Fields only the gateway sets upstream; a caller sending them gets a detail that says so. */
const RESERVED: Record<string, string> = {
  callback_url: 'is set by the gateway (it receives CometAPI\'s callbacks itself); use webhook_url to be notified',
  external_task_id: 'is set by the gateway; use reference for your own id'
}

interface AjvError { instancePath: string, message?: string, keyword: string, params: Record<string, unknown> }

/** Turns one Ajv error into a pointer at the offending field (the missing or unknown property itself). */
export function fieldErrorOf (e: AjvError, location?: FieldError['location']): FieldError {
  // Names come from the caller (an unknown property): cut and escaped by `segment`, never echoed unbounded.
  const escape = segment
  let pointer = e.instancePath
  let detail = e.message ?? 'is invalid'
  if (e.keyword === 'required') {
    pointer += '/' + escape(String(e.params.missingProperty))
    detail = 'is required'
  } else if (e.keyword === 'additionalProperties') {
    const name = String(e.params.additionalProperty)
    pointer += '/' + escape(name)
    detail = (e.instancePath === '' ? RESERVED[name] : undefined) ?? NOT_ACCEPTED
  }
  return { pointer: pointer === '' ? '/' : pointer, detail, ...(location !== undefined && { location }) }
}

/**
 * One entry per bad field: Ajv reports a failed `anyOf` as one error per branch plus the anyOf itself, which
 * reads badly; those become a single "must be one of" with the allowed values.
 */
export function fieldErrorsOf (errors: AjvError[], location?: FieldError['location']): FieldError[] {
  const byPointer = new Map<string, Array<{ e: AjvError, f: FieldError }>>()
  for (const e of errors) {
    const f = fieldErrorOf(e, location)
    const group = byPointer.get(f.pointer)
    if (group === undefined) byPointer.set(f.pointer, [{ e, f }])
    else group.push({ e, f })
  }
  const out: FieldError[] = []
  for (const [pointer, group] of byPointer) {
    if (group.some(({ e }) => e.keyword === 'anyOf' && e.instancePath === pointer)) {
      const allowed = group.filter(({ e }) => e.keyword === 'const')
        .map(({ e }) => JSON.stringify(e.params.allowedValue))
      out.push({
        pointer,
        detail: allowed.length > 0 ? `must be one of: ${allowed.join(', ')}` : 'does not match any allowed form',
        ...(location !== undefined && { location })
      })
      continue
    }
    const seen = new Set<string>()
    for (const { f } of group) if (!seen.has(f.detail)) { seen.add(f.detail); out.push(f) }
  }
  return out
}

/** Sends a problem+json body; the only place error bodies are shaped. */
export function sendProblem (reply: FastifyReply, status: number, code: string, detail: string, errors?: FieldError[],
  extensions?: Record<string, string | number>) {
  return reply.code(status).type('application/problem+json')
    .send({ ...problemBody(status, code, detail, errors), ...extensions })
}

/** A problem document; at most MAX_LISTED_ERRORS field errors, the rest counted in `errors_omitted`. */
export function problemBody (status: number, code: string, detail: string, fieldErrors?: FieldError[]) {
  const { errors, omitted } = boundErrors(fieldErrors ?? [])
  return {
    ...problemFields(status, code, detail),
    ...(errors.length > 0 && { errors }),
    ...(omitted > 0 && { errors_omitted: omitted })
  }
}

/** One error handler for the whole app: validation, our own errors, Fastify's 4xx, and opaque 5xx. */
/**
 * Fastify's own 4xx as ours: a code of the gateway (never `FST_…`) and a detail that says what to send instead.
 * Fastify's messages are not echoed: some quote the caller's input.
 */
function frameworkProblem (err: FastifyError, request: FastifyRequest):
{ status: number, code: ErrorCode, detail: string } | undefined {
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return {
        status: 415,
        code: 'UNSUPPORTED_MEDIA_TYPE',
        detail: (request.headers['content-type'] === undefined
          ? 'the body has no Content-Type'
          : 'the body\'s Content-Type is not one the gateway reads') +
          ': send Content-Type: application/json (or text/plain)'
      }
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return {
        status: 413,
        code: 'BODY_TOO_LARGE',
        detail: `the body is larger than this route's limit of ${request.routeOptions.bodyLimit} bytes`
      }
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return { status: 400, code: 'INVALID_JSON', detail: 'the body is not valid JSON; send one JSON object' }
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { status: 400, code: 'BAD_REQUEST', detail: 'the body is not as long as its Content-Length says' }
    case 'FST_ERR_BAD_URL':
      return {
        status: 404,
        code: 'NOT_FOUND',
        detail: 'no route has this URL: it is not valid percent-encoded UTF-8'
      }
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return {
        status: 414,
        code: 'URI_TOO_LONG',
        detail: `a path parameter is longer than ${MAX_PARAM_LENGTH} characters; no id is that long`
      }
  }
  return undefined
}

/** The router's own length limit on a path parameter (Fastify's default), named in the 414's detail. */
export const MAX_PARAM_LENGTH = 100

/** For Fastify's `frameworkErrors` option: errors the router meets before any route, hook or error handler. */
export function frameworkErrors (err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const p = frameworkProblem(err, request) ??
    { status: 500, code: 'INTERNAL', detail: 'the gateway failed to handle this request; it has been logged' }
  if (p.status >= 500) request.log.error({ err }, 'router error')
  sendProblem(reply, p.status, p.code, p.detail).then(() => {}, () => {})
}

/**
 * For Fastify's `clientErrorHandler`: what Node's HTTP parser refused, answered as a minimal problem+json on the
 * socket (no request exists yet). A request line that alone fills the header limit is a URL too long (414).
 */
export function clientErrorHandler (error: Error & { code?: string }, socket: Duplex): void {
  const err = error as Error & { code?: string, rawPacket?: Buffer }
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const limit = http.maxHeaderSize
  let p: { status: number, code: ErrorCode, detail: string }
  if (err.code === 'HPE_HEADER_OVERFLOW') {
    const packet = err.rawPacket
    const lineEnd = packet === undefined ? 0 : packet.indexOf('\r\n')
    p = packet !== undefined && /^[A-Z]+ /.test(packet.subarray(0, 16).toString('latin1')) &&
      (lineEnd < 0 || lineEnd >= limit)
      ? {
          status: 414,
          code: 'URI_TOO_LONG',
          detail: `the URL is longer than ${limit} bytes, the limit of the ` +
          'request line and headers together: send a shorter URL'
        }
      : {
          status: 431,
          code: 'HEADERS_TOO_LARGE',
          detail: `the request line and headers are larger than ${limit} ` +
          'bytes together: send fewer or smaller headers'
        }
  } else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    p = { status: 408, code: 'REQUEST_TIMEOUT', detail: 'the request did not arrive in time; send it again' }
  } else {
    p = { status: 400, code: 'BAD_REQUEST', detail: 'the request is not valid HTTP/1.1' }
  }
  if (socket.writable) {
    const body = JSON.stringify(problemBody(p.status, p.code, p.detail))
    socket.write(`HTTP/1.1 ${p.status} ${STATUS_CODES[p.status] ?? 'Error'}\r\nConnection: close\r\n` +
      `Content-Type: application/problem+json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
  }
  socket.destroy(err)
}

export default fp(async function errors (app: FastifyInstance) {
  boundBodies(app)
  app.setErrorHandler((err: FastifyError, request, reply) => {
    if (err.validation !== undefined) {
      const location = LOCATIONS[err.validationContext ?? 'body']
      const fields = fieldErrorsOf(err.validation as AjvError[], location)
      const detail = `${fields.length} invalid field${fields.length === 1 ? '' : 's'}`
      return sendProblem(reply, 400, 'INVALID_REQUEST', detail, fields)
    }
    if (err instanceof GatewayError) {
      if (err.headers !== undefined) reply.headers(err.headers)
      if (err.statusCode >= 500) request.log.warn({ code: err.code }, err.message)
      return sendProblem(reply, err.statusCode, err.code, err.message, err.errors, err.extensions)
    }
    if (isRedisUnavailable(err)) {
      request.log.warn({ err: err.message }, 'redis unavailable')
      reply.header('retry-after', '1')
      return sendProblem(reply, 503, 'UNAVAILABLE', 'storage is briefly unavailable; retry after Retry-After')
    }
    const framework = frameworkProblem(err, request)
    if (framework !== undefined) return sendProblem(reply, framework.status, framework.code, framework.detail)
    const status = err.statusCode ?? 500
    if (status < 500) return sendProblem(reply, status, 'BAD_REQUEST', 'the request could not be read')
    request.log.error({ err }, 'unhandled error')
    return sendProblem(reply, status, 'INTERNAL', 'the gateway failed to handle this request; it has been logged')
  })
  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, 404, 'NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`))

  // A request that arrives on a kept-alive connection while the app closes: a problem+json 503, like every other
  // error (Fastify's own return503OnClosing answers plain JSON before any hook runs, so it is off in app.ts).
  let closing = false
  app.addHook('preClose', async () => { closing = true })
  // Callback style, like the other per-request hooks: an async hook costs every request a promise and a tick.
  app.addHook('onRequest', (_request, reply, done) => {
    if (!closing) { done(); return }
    reply.header('retry-after', '1').header('connection', 'close')
    sendProblem(reply, 503, 'UNAVAILABLE', 'this replica is shutting down; retry after Retry-After')
  })
}, { name: 'errors' })
