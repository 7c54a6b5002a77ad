/**
 * The OpenAPI document as a contract the tests hold the app to: every response a gateway app sends during the
 * suite is checked against `openapi/openapi.json` (status listed for its operation, content type, JSON body
 * valid by the response schema), and the harness fails on close when one was not (test/helpers/harness.ts).
 *
 * The hooks are attached through Fastify's `fastify.initialization` diagnostics channel, published when an
 * instance is made and before any plugin: hooks added then reach every route, with no change to buildApp.
 * Routes are matched by operationId, so the simulator's and the docs' routes are ignored.
 */
import { subscribe } from 'node:diagnostics_channel'
import { readFileSync } from 'node:fs'
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js'
import addFormatsModule from 'ajv-formats'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'

// ajv-formats ships CommonJS with a default export.
const addFormats = addFormatsModule as unknown as (ajv: Ajv2020) => Ajv2020

type Json = Record<string, unknown>
interface Operation { method: string, path: string, op: Json }

const DOC_ID = 'openapi.json'
const escape = (s: string) => s.replace(/~/g, '~0').replace(/\//g, '~1')
const isJson = (media: string) => media === 'application/json' || media.endsWith('+json')
const list = (o: object) => Object.keys(o).join(', ')

/** What the app sent, as far as the check needs it. */
export interface SentResponse { status: number, contentType?: string, body?: string | Buffer, head?: boolean }

export function readDocument (): Json {
  return JSON.parse(readFileSync(new URL('../../openapi/openapi.json', import.meta.url), 'utf8')) as Json
}

/** Ajv 2020 (OpenAPI 3.1 schemas are JSON Schema 2020-12) holding the whole document, so `$ref`s resolve in it. */
export class DocumentSchemas {
  private readonly ajv: Ajv2020
  private readonly cache = new Map<string, ValidateFunction>()

  constructor (readonly doc: Json) {
    this.ajv = new Ajv2020({ allErrors: true, strictTypes: false, strictTuples: false, validateFormats: true })
    addFormats(this.ajv)
    // OpenAPI's own schema keywords and our `x-` extensions are annotations; so are the document's top-level
    // fields, since Ajv compiles the document's root (as an empty schema) to resolve a `$ref` into it.
    const extensions = new Set<string>()
    JSON.stringify(doc, (key, value: unknown) => { if (key.startsWith('x-')) extensions.add(key); return value })
    const topLevel = Object.keys(doc).filter(k => k !== '$schema' && k !== '$id')
    this.ajv.addVocabulary(['example', 'discriminator', 'xml', 'externalDocs', ...extensions, ...topLevel])
    this.ajv.addSchema(doc, DOC_ID)
  }

  /** The validator of the schema at a JSON pointer into the document (as path segments). */
  validator (segments: string[]): ValidateFunction {
    const pointer = segments.map(escape).join('/')
    let validate = this.cache.get(pointer)
    if (validate === undefined) {
      validate = this.ajv.compile({ $ref: `${DOC_ID}#/${pointer}` })
      this.cache.set(pointer, validate)
    }
    return validate
  }

  errorsText (validate: ValidateFunction, max = 3): string {
    return this.ajv.errorsText((validate.errors ?? []).slice(0, max))
  }
}

/** Checks one response against the document; null when it conforms, else what is wrong. */
export class Contract {
  private readonly schemas: DocumentSchemas
  private readonly operations = new Map<string, Operation>()

  constructor (doc: Json = readDocument()) {
    this.schemas = new DocumentSchemas(doc)
    for (const [path, item] of Object.entries(doc.paths as Record<string, Record<string, Json>>)) {
      for (const [method, op] of Object.entries(item)) {
        if (typeof op.operationId === 'string') this.operations.set(op.operationId, { method, path, op })
      }
    }
  }

  has (operationId: string): boolean { return this.operations.has(operationId) }

  check (operationId: string, r: SentResponse): string | null {
    const found = this.operations.get(operationId)
    if (found === undefined) return 'not in the document'
    const responses = found.op.responses as Record<string, Json>
    const key = [String(r.status), `${String(r.status)[0]}XX`, 'default'].find(k => responses[k] !== undefined)
    if (key === undefined) return `status ${r.status} is not in the document (it lists ${list(responses)})`
    const content = responses[key].content as Record<string, Json> | undefined
    const media = r.contentType?.split(';')[0].trim().toLowerCase()
    // Node sends no body with a 204 or 304, whatever was serialized for it (`null` is).
    const empty = r.head === true || r.status === 204 || r.status === 304 || r.body === undefined || r.body.length === 0
    if (content === undefined) return empty ? null : `a body (${media ?? 'untyped'}), where the document has none`
    if (media === undefined) return empty ? null : `no content type; the document has ${list(content)}`
    if (content[media] === undefined) return `content type ${media}; the document has ${list(content)}`
    if (!isJson(media) || r.head === true) return null
    if (r.body === undefined) return 'a JSON response whose body the check did not see'
    let body: unknown
    try {
      body = JSON.parse(r.body.toString())
    } catch {
      return `a ${media} body that is not JSON`
    }
    const validate = this.schemas.validator(['paths', found.path, found.method, 'responses', key, 'content', media,
      'schema'])
    return validate(body) ? null : `body: ${this.schemas.errorsText(validate)}`
  }
}

let contract: Contract | undefined
interface Seen { checked: number, mismatches: string[] }
const records = new WeakMap<FastifyInstance, Seen>()
const bodies = new WeakMap<FastifyRequest, string | Buffer>()

function operationOf (request: FastifyRequest): string | undefined {
  const id = (request.routeOptions.schema as { operationId?: unknown } | undefined)?.operationId
  return typeof id === 'string' && contract?.has(id) === true ? id : undefined
}

function attach (app: FastifyInstance) {
  const record: Seen = { checked: 0, mismatches: [] }
  records.set(app, record)
  app.addHook('onSend', async (request, _reply, payload) => {
    if (operationOf(request) !== undefined && (typeof payload === 'string' || Buffer.isBuffer(payload))) {
      bodies.set(request, payload)
    }
    return payload
  })
  app.addHook('onResponse', async (request: FastifyRequest, reply: FastifyReply) => {
    const id = operationOf(request)
    if (id === undefined || contract === undefined) return
    const body = bodies.get(request)
    const header = reply.getHeader('content-type') ?? reply.raw.getHeader('content-type')
    // A hijacked reply (SSE) wrote its head itself: only its status is known here.
    const hijacked = body === undefined && header === undefined
    let problem: string | null
    try {
      problem = contract.check(id, {
        status: reply.raw.statusCode,
        contentType: hijacked ? undefined : String(header),
        body,
        head: request.method === 'HEAD'
      })
    } catch (err) {
      // Thrown here it would end the app's other onResponse hooks (metrics): it is a mismatch instead.
      problem = `the check failed: ${(err as Error).message}`
    }
    record.checked++
    if (problem !== null) {
      const where = `${request.method} ${request.url.split('?')[0]}`
      record.mismatches.push(`${id} (${where}) → ${reply.raw.statusCode}: ${problem}`)
    }
  })
}

/** Checks every gateway app made from now on in this process. Idempotent. */
export function watchContract (): void {
  if (contract !== undefined) return
  contract = new Contract()
  subscribe('fastify.initialization', message => attach((message as { fastify: FastifyInstance }).fastify))
}

/** How many responses of this app were checked, and what did not match. */
export function contractRecord (app: FastifyInstance): Seen {
  return records.get(app) ?? { checked: 0, mismatches: [] }
}

/** Fails when any response of this app did not match the document. */
export function assertContract (app: FastifyInstance): void {
  const found = contractRecord(app).mismatches
  if (found.length === 0) return
  const more = found.length > 5 ? `\n… and ${found.length - 5} more` : ''
  throw new Error(`responses that do not match openapi/openapi.json:\n${found.slice(0, 5).join('\n')}${more}`)
}
