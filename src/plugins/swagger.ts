import fp from 'fastify-plugin'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance } from 'fastify'
import { HEADERS, ProblemSchema } from '../schemas/common.ts'
import { eventSchemas, headerComponents, webhookDocs } from '../schemas/events.ts'

type Json = Record<string, unknown>

/**
 * @fastify/swagger copies a response's `headers` inline (`{schema}`); a header declared under components.headers
 * becomes a `$ref` instead, so that generators see one Retry-After, not twenty.
 */
function referHeaders (doc: Json): Json {
  const names = new Map(Object.keys(HEADERS).map(n => [n.toLowerCase(), n]))
  for (const item of Object.values(doc.paths as Record<string, Record<string, Json>>)) {
    for (const op of Object.values(item)) {
      for (const response of Object.values((op.responses ?? {}) as Record<string, Json>)) {
        const headers = response.headers as Json | undefined
        for (const name of Object.keys(headers ?? {})) {
          const component = names.get(name.toLowerCase())
          if (headers === undefined || component === undefined) continue
          headers[name] = { $ref: `#/components/headers/${component}` }
        }
      }
    }
  }
  return doc
}

/**
 * @fastify/swagger writes `contentEncoding: base64` as `format: byte`, which generators read as a byte array; the
 * image strings it marks (src/schemas/videos.ts) are an https URL or Base64, so the document shows them as plain
 * strings, marked `x-image` instead.
 */
/**
 * A query parameter with a default may be left out (Ajv fills it in), but TypeBox lists it as required, so a client
 * generated from the document would have to send `limit` and `index` on every call.
 */
function defaultsAreOptional (paths: unknown): void {
  for (const item of Object.values(paths as Record<string, Record<string, Json>>)) {
    for (const op of Object.values(item)) {
      for (const p of (op.parameters ?? []) as Json[]) {
        if (p.in === 'query' && (p.schema as Json | undefined)?.default !== undefined) p.required = false
      }
    }
  }
}

function imagesAreStrings (node: unknown): void {
  if (typeof node !== 'object' || node === null) return
  const schema = node as Json
  if (schema.type === 'string' && schema.format === 'byte') {
    delete schema.format
    schema['x-image'] = true
  }
  for (const value of Object.values(schema)) imagesAreStrings(value)
}

/** OpenAPI 3.1 from the route schemas; only tagged routes are part of the contract (`hideUntagged`). */
export default fp(async function docs (app: FastifyInstance) {
  app.addSchema(ProblemSchema)
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'kling-gateway',
        version: '1',
        description: 'A gateway to CometAPI\'s Kling multi-image-to-video: strict validation, tasks in Redis, ' +
          'callbacks, reconciliation, webhooks and SSE.\n\nErrors are `application/problem+json` (RFC 9457) with a ' +
          'stable `code`; a 400 lists every invalid field in `errors`. Every 503 carries `Retry-After`: retry it, ' +
          'with the same Idempotency-Key for a create.'
      },
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', description: 'an API key from API_KEYS or ADMIN_API_KEYS' }
        }
      },
      tags: [
        { name: 'videos', description: 'video tasks' },
        { name: 'webhooks', description: 'webhook endpoints and deliveries, and the webhooks the gateway sends' },
        { name: 'callbacks', description: 'CometAPI → gateway' },
        { name: 'admin', description: 'operators only (ADMIN_API_KEYS)' },
        { name: 'usage', description: 'per-caller usage and limits' },
        { name: 'health', description: 'liveness, readiness and metrics' }
      ]
    },
    hideUntagged: true,
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => String(json.$id ?? `def-${i}`) },
    transformObject: (documentObject) => {
      // Only the OpenAPI branch of the union exists here: `openapi` is set above.
      const doc = referHeaders((documentObject as { openapiObject: Json }).openapiObject)
      imagesAreStrings(doc.paths)
      defaultsAreOptional(doc.paths)
      const components = doc.components as Json
      components.schemas = { ...(components.schemas as Json), ...eventSchemas }
      components.headers = headerComponents()
      doc.webhooks = webhookDocs()
      return doc as never
    }
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
}, { name: 'docs' })
