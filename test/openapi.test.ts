import { describe, it, expect } from 'vitest'
import { readFile } from 'node:fs/promises'
import { renderOpenApi } from './helpers/openapi.ts'

type Json = Record<string, unknown>

/** Every string, array and object a caller can send is bounded, so Ajv's allErrors cannot be abused. */
function unbounded (schema: Json, path: string, out: string[]) {
  if (typeof schema !== 'object' || schema === null) return
  // x-bounded-by marks the image strings, bounded by the body limit and checked by size before decoding.
  if (schema.type === 'string' && schema.maxLength === undefined && schema.enum === undefined && schema.const === undefined && schema.format === undefined && schema['x-bounded-by'] === undefined) out.push(path)
  if (schema.type === 'array' && schema.maxItems === undefined) out.push(path)
  if (schema.type === 'object' && schema.properties !== undefined && schema.additionalProperties !== false && schema.maxProperties === undefined) out.push(path)
  for (const [k, v] of Object.entries(schema)) if (typeof v === 'object' && v !== null) unbounded(v as Json, `${path}/${k}`, out)
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
        for (const p of (op.parameters as Json[] | undefined) ?? []) unbounded(p.schema as Json, `${method} ${route} ${String(p.name)}`, out)
      }
    }
    expect(out).toEqual([])
  })
})
