import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify'
import { GatewayError, type FieldError } from '../domain/errors.ts'
import { STATUS_CODES } from 'node:http'
import { isRedisUnavailable } from '../infra/redis.ts'

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
  const escape = (s: string) => s.replace(/~/g, '~0').replace(/\//g, '~1')
  let pointer = e.instancePath
  let detail = e.message ?? 'is invalid'
  if (e.keyword === 'required') {
    pointer += '/' + escape(String(e.params.missingProperty))
    detail = 'is required'
  } else if (e.keyword === 'additionalProperties') {
    const name = String(e.params.additionalProperty)
    pointer += '/' + escape(name)
    detail = (e.instancePath === '' ? RESERVED[name] : undefined) ?? 'is not an accepted field'
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
    byPointer.set(f.pointer, [...(byPointer.get(f.pointer) ?? []), { e, f }])
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
export function sendProblem (reply: FastifyReply, status: number, code: string, detail: string, errors?: FieldError[]) {
  return reply.code(status).type('application/problem+json').send({
    type: `urn:kling-gateway:problem:${code.toLowerCase()}`,
    title: STATUS_CODES[status] ?? 'Error',
    status,
    detail,
    code,
    ...(errors !== undefined && errors.length > 0 && { errors })
  })
}

/** One error handler for the whole app: validation, our own errors, Fastify's 4xx, and opaque 5xx. */
export default fp(async function errors (app: FastifyInstance) {
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
      return sendProblem(reply, err.statusCode, err.code, err.message, err.errors)
    }
    if (isRedisUnavailable(err)) {
      request.log.warn({ err: err.message }, 'redis unavailable')
      reply.header('retry-after', '1')
      return sendProblem(reply, 503, 'UNAVAILABLE', 'storage is briefly unavailable; retry after Retry-After')
    }
    const status = err.statusCode ?? 500
    if (status < 500) return sendProblem(reply, status, err.code ?? 'BAD_REQUEST', err.message)
    request.log.error({ err }, 'unhandled error')
    return sendProblem(reply, status, 'INTERNAL', 'the gateway failed to handle this request; it has been logged')
  })
  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, 404, 'NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`))

  // A request that arrives on a kept-alive connection while the app closes: a problem+json 503, like every other
  // error (Fastify's own return503OnClosing answers plain JSON before any hook runs, so it is off in app.ts).
  let closing = false
  app.addHook('preClose', async () => { closing = true })
  app.addHook('onRequest', async (_request, reply) => {
    if (!closing) return
    reply.header('retry-after', '1').header('connection', 'close')
    return await sendProblem(reply, 503, 'UNAVAILABLE', 'this replica is shutting down; retry after Retry-After')
  })
}, { name: 'errors' })
