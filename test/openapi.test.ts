import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { spawnSync } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { compileErrors, validate } from '@readme/openapi-parser'
import { renderOpenApi } from './helpers/openapi.ts'
import { Contract, contractRecord, DocumentSchemas, readDocument } from './helpers/contract.ts'
import { auth, startHarness, type Harness } from './helpers/harness.ts'
import { Receiver } from './helpers/receiver.ts'
import { EVENT_TYPES } from '../src/domain/task.ts'
import { CREATE_EXAMPLE, TASK_EXAMPLE } from '../src/schemas/examples.ts'

type Json = Record<string, unknown>

/** Every string, array and object a caller can send is bounded, so Ajv's allErrors cannot be abused. */
function unbounded (schema: Json, path: string, out: string[]) {
  if (typeof schema !== 'object' || schema === null) return
  // x-image marks the image strings, bounded by the body limit and checked by size before decoding.
  const bounded = schema.maxLength !== undefined || schema['x-image'] === true
  const closed = schema.enum !== undefined || schema.const !== undefined || schema.format !== undefined
  if (schema.type === 'string' && !bounded && !closed) out.push(path)
  if (schema.type === 'array' && schema.maxItems === undefined) out.push(path)
  const openEnded = schema.additionalProperties !== false && schema.maxProperties === undefined
  if (schema.type === 'object' && schema.properties !== undefined && openEnded) out.push(path)
  for (const [k, v] of Object.entries(schema)) {
    if (typeof v === 'object' && v !== null) unbounded(v as Json, `${path}/${k}`, out)
  }
}

describe('OpenAPI', () => {
  it('the committed openapi/openapi.json is what the routes produce (run `npm run openapi`)', async () => {
    const committed = await readFile(new URL('../openapi/openapi.json', import.meta.url), 'utf8')
    expect(committed).toBe(await renderOpenApi())
  })

  it('bounds every input string, array and object', async () => {
    const doc = JSON.parse(await renderOpenApi())
    const out: string[] = []
    for (const [route, ops] of Object.entries(doc.paths as Record<string, Json>)) {
      for (const [method, op] of Object.entries(ops as Record<string, Json>)) {
        const body = (op.requestBody as Json | undefined)?.content as Record<string, { schema: Json }> | undefined
        for (const media of Object.values(body ?? {})) unbounded(media.schema, `${method} ${route}`, out)
        for (const p of (op.parameters as Json[] | undefined) ?? []) {
          unbounded(p.schema as Json, `${method} ${route} ${String(p.name)}`, out)
        }
      }
    }
    expect(out).toEqual([])
  })
})

type Op = Json & { operationId: string, responses: Record<string, Json> }

/** Every operation of the document, with where it is. */
function operations (doc: Json): Array<{ where: string, op: Op }> {
  const out: Array<{ where: string, op: Op }> = []
  for (const section of ['paths', 'webhooks']) {
    for (const [path, item] of Object.entries((doc[section] ?? {}) as Record<string, Record<string, Op>>)) {
      for (const [method, op] of Object.entries(item)) out.push({ where: `${method.toUpperCase()} ${path}`, op })
    }
  }
  return out
}

/** Every media object (with the segments that reach it) under requestBody and responses. */
function mediaObjects (doc: Json): Array<{ segments: string[], media: Json }> {
  const out: Array<{ segments: string[], media: Json }> = []
  for (const section of ['paths', 'webhooks']) {
    for (const [path, item] of Object.entries((doc[section] ?? {}) as Record<string, Record<string, Op>>)) {
      for (const [method, op] of Object.entries(item)) {
        const at = [section, path, method]
        const body = (op.requestBody as Json | undefined)?.content as Record<string, Json> | undefined
        for (const [type, media] of Object.entries(body ?? {})) {
          out.push({ segments: [...at, 'requestBody', 'content', type], media })
        }
        for (const [status, response] of Object.entries(op.responses)) {
          for (const [type, media] of Object.entries((response.content ?? {}) as Record<string, Json>)) {
            out.push({ segments: [...at, 'responses', status, 'content', type], media })
          }
        }
      }
    }
  }
  return out
}

describe('OpenAPI document', () => {
  const doc = readDocument()

  it('is a valid OpenAPI 3.1 document (@readme/openapi-parser), without warnings', async () => {
    expect(doc.openapi).toBe('3.1.0')
    // validate() dereferences what it is given: a copy keeps `doc` as it is for the other tests.
    const result = await validate(structuredClone(doc) as never)
    expect(result.valid ? [] : compileErrors(result)).toEqual([])
    expect(result.warnings).toEqual([])
  })

  it('has paths without trailing slashes', () => {
    expect(Object.keys(doc.paths as Json).filter(p => p.endsWith('/'))).toEqual([])
  })

  it('describes every operation: operationId, summary, description, tags, security, named responses', () => {
    const problems: string[] = []
    const ids = new Set<string>()
    for (const { where, op } of operations(doc)) {
      if (!/^[a-z][a-zA-Z0-9]*$/.test(op.operationId ?? '')) problems.push(`${where}: operationId ${op.operationId}`)
      if (ids.has(op.operationId)) problems.push(`${where}: duplicate operationId`)
      ids.add(op.operationId)
      for (const field of ['summary', 'description']) {
        if (typeof op[field] !== 'string' || op[field] === '') problems.push(`${where}: no ${field}`)
      }
      if (!Array.isArray(op.tags) || op.tags.length === 0) problems.push(`${where}: no tags`)
      // Callbacks (a token), health (probes) and the webhooks we send carry no bearer key; everything else does.
      const webhook = where.startsWith('POST video.')
      const open = webhook || (op.tags as string[]).some(t => t === 'callbacks' || t === 'health')
      expect(op.security, where).toEqual(webhook ? [] : open ? undefined : [{ bearer: [] }])
      for (const [status, r] of Object.entries(op.responses)) {
        const named = typeof r.description === 'string' && r.description !== '' && r.description !== 'Default Response'
        if (!named) problems.push(`${where} ${status}: no description`)
      }
    }
    expect(problems).toEqual([])
  })

  it('has an example for every request body and every response body, valid by its schema', () => {
    const schemas = new DocumentSchemas(doc)
    const problems: string[] = []
    for (const { segments, media } of mediaObjects(doc)) {
      const where = segments.join(' ')
      if (media.example === undefined) { problems.push(`${where}: no example`); continue }
      if (!segments.at(-1)!.includes('json')) continue
      const check = schemas.validator([...segments, 'schema'])
      if (!check(media.example)) problems.push(`${where}: ${schemas.errorsText(check)}`)
    }
    for (const [name, schema] of Object.entries((doc.components as { schemas: Record<string, Json> }).schemas)) {
      if (schema.example === undefined) continue
      const check = schemas.validator(['components', 'schemas', name])
      if (!check(schema.example)) problems.push(`components.schemas.${name}: ${schemas.errorsText(check)}`)
    }
    expect(problems).toEqual([])
  })

  it('lists 500 everywhere, 401 on every bearer route, 413 and 415 wherever a body is read, Retry-After on 503', () => {
    const problems: string[] = []
    for (const [path, item] of Object.entries(doc.paths as Record<string, Record<string, Op>>)) {
      for (const [method, op] of Object.entries(item)) {
        const has = (s: number) => op.responses[String(s)] !== undefined
        if (!has(500)) problems.push(`${method} ${path}: no 500`)
        if (op.security !== undefined && !has(401)) problems.push(`${method} ${path}: no 401`)
        const readsBody = method === 'post' || method === 'delete'
        if (readsBody && !(has(413) && has(415))) problems.push(`${method} ${path}: no 413/415`)
        const retry = (op.responses['503']?.headers as Json | undefined)?.['Retry-After']
        if (has(503) && retry === undefined) problems.push(`${method} ${path}: 503 without Retry-After`)
        for (const [status, r] of Object.entries(op.responses)) {
          const problemJson = (r.content as Json | undefined)?.['application/problem+json'] !== undefined
          if (Number(status) >= 400 && path.startsWith('/v1/') && !problemJson) {
            problems.push(`${method} ${path} ${status}: not problem+json`)
          }
        }
      }
    }
    expect(problems).toEqual([])
  })

  it('has one webhook per event type, with the Standard Webhooks headers and the 2xx/410 semantics', () => {
    const webhooks = doc.webhooks as Record<string, { post: Op }>
    expect(Object.keys(webhooks)).toEqual([...EVENT_TYPES])
    for (const [type, { post }] of Object.entries(webhooks)) {
      expect((post.parameters as Json[]).map(p => [p.in, p.name, p.required])).toEqual([
        ['header', 'webhook-id', true], ['header', 'webhook-timestamp', true], ['header', 'webhook-signature', true]
      ])
      const content = (post.requestBody as Json).content as Record<string, { schema: Json }>
      expect(content['application/json'].schema.properties).toMatchObject({
        type: { const: type }, data: { $ref: '#/components/schemas/Task' }
      })
      expect(Object.keys(post.responses)).toEqual(expect.arrayContaining(['2XX', '410', 'default']))
    }
  })

  it('`npm run openapi -- --check` fails on a stale file and passes on a fresh one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kg-openapi-'))
    try {
      const file = join(dir, 'openapi.json')
      const args = (path: string) => ['--import', 'tsx', 'scripts/openapi.ts', '--check', `--file=${path}`]
      const run = (path: string) => spawnSync(process.execPath, args(path), { encoding: 'utf8' })
      await writeFile(file, (await renderOpenApi()).replace('"summary": "Get a task"', '"summary": "Get a task!"'))
      expect(run(file).status).toBe(1)
      await writeFile(file, await renderOpenApi())
      expect(run(file).status).toBe(0)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('Contract (the response check the harness runs)', () => {
  const contract = new Contract()
  const problem = JSON.stringify({ type: 'urn:x', title: 'Not Found', status: 404, detail: 'gone', code: 'NOT_FOUND' })
  const json = 'application/json'

  it('passes a documented response and names what is wrong with others', () => {
    const asProblem = 'application/problem+json; charset=utf-8'
    expect(contract.check('getVideo', { status: 404, contentType: asProblem, body: problem })).toBeNull()
    expect(contract.check('getVideo', { status: 418, contentType: json, body: '{}' })).toMatch(/status 418 is not in/)
    expect(contract.check('getVideo', { status: 404, contentType: json, body: problem })).toMatch(/^content type /)
    expect(contract.check('getVideo', { status: 200, contentType: json, body: '{"id":1}' })).toMatch(/^body: /)
    expect(contract.check('deleteWebhookEndpoint', { status: 204, body: 'null' })).toBeNull()
  })
})

describe('routes (real app)', () => {
  const json = 'application/json'
  let h: Harness
  beforeAll(async () => { h = await startHarness() })
  afterAll(async () => { await h.close() })

  it('answers /v1/videos and /v1/videos/, /v1/webhook-endpoints and /v1/webhook-endpoints/ alike', async () => {
    for (const url of ['/v1/videos', '/v1/videos/']) {
      const created = await h.app.inject({ method: 'POST', url, headers: auth('alice'), payload: CREATE_EXAMPLE })
      expect(created.statusCode, `POST ${url}: ${created.body}`).toBe(202)
      expect(created.headers.location).toBe(`/v1/videos/${created.json<{ id: string }>().id}`)
      const list = await h.app.inject({ url, headers: auth('alice') })
      expect(list.statusCode, `GET ${url}`).toBe(200)
    }
    for (const url of ['/v1/webhook-endpoints', '/v1/webhook-endpoints/']) {
      const res = await h.app.inject({ url, headers: auth('alice') })
      expect(res.statusCode, `GET ${url}`).toBe(200)
      expect(res.json()).toEqual({ data: [] })
    }
    // A trailing slash on an id route still reaches it (not the list).
    const list = await h.app.inject({ url: '/v1/videos', headers: auth('alice') })
    const [task] = list.json<{ data: Array<{ id: string }> }>().data
    const one = await h.app.inject({ url: `/v1/videos/${task.id}/`, headers: auth('alice') })
    expect(one.json()).toMatchObject({ id: task.id })
  })

  it('sends webhooks as the document describes them', async () => {
    const r = await Receiver.start()
    try {
      const ep = await h.app.inject({
        method: 'POST', url: '/v1/webhook-endpoints', headers: auth('bob'), payload: { url: r.url() }
      })
      expect(ep.statusCode, ep.body).toBe(201)
      const created = await h.app.inject({
        method: 'POST', url: '/v1/videos', headers: auth('bob'), payload: CREATE_EXAMPLE
      })
      expect(created.statusCode).toBe(202)
      const got = await r.waitFor(2)
      expect(got.length).toBeGreaterThanOrEqual(2)
      const schemas = new DocumentSchemas(readDocument())
      for (const x of got) {
        const type = JSON.parse(x.body).type as string
        const check = schemas.validator(['webhooks', type, 'post', 'requestBody', 'content', json, 'schema'])
        expect(check(JSON.parse(x.body)), schemas.errorsText(check)).toBe(true)
        for (const name of ['webhook-id', 'webhook-timestamp', 'webhook-signature']) {
          expect(x.headers[name]).toBeTypeOf('string')
        }
      }
    } finally {
      await r.close()
    }
  })

  it('answers 415, 413 and a bad JSON body with the documented problems', async () => {
    const post = async (url: string, payload: string, type: string) =>
      await h.app.inject({ method: 'POST', url, headers: { ...auth('alice'), 'content-type': type }, payload })
    const cases: Array<[number, Awaited<ReturnType<typeof post>>]> = [
      [415, await post('/v1/videos', '<a/>', 'application/xml')],
      [400, await post('/v1/videos', 'hello', 'text/plain')],
      [413, await post('/v1/webhook-endpoints', 'x'.repeat(1024 * 1024 + 1), json)],
      [400, await post('/v1/webhook-endpoints', '{"url":', json)],
      [415, await post(`/v1/videos/${TASK_EXAMPLE.id}/cancel`, '<a/>', 'application/xml')]
    ]
    for (const [status, res] of cases) {
      expect(res.statusCode, res.body).toBe(status)
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/)
    }
    // Each went through the harness's contract check as well (see the next test).
  })

  it('checks the responses it sends against the document', () => {
    expect(contractRecord(h.app).checked).toBeGreaterThan(5)
    expect(contractRecord(h.app).mismatches).toEqual([])
  })
})
