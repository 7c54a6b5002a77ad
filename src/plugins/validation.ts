import { Ajv, type Options } from 'ajv'
import addFormatsModule from 'ajv-formats'
import type { FastifySchemaCompiler, FastifyServerOptions } from 'fastify'

// ajv-formats ships CommonJS with a default export.
const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv

/**
 * Two Ajv instances: bodies are validated strictly (no type coercion: `"prompt": 5` is an error, not "5"),
 * query strings, params and headers are coerced from their string form as usual. Both list every error
 * (`allErrors`), which is safe because every input string and array is bounded (test/openapi.test.ts).
 * Given as a schema controller so encapsulated plugins that add schemas keep it.
 */
export const schemaController: FastifyServerOptions['schemaController'] = {
  compilersFactory: {
    buildValidator: ((externalSchemas: Record<string, unknown> = {}): FastifySchemaCompiler<unknown> => {
      const common: Options = { allErrors: true, removeAdditional: false, useDefaults: true, strict: false }
      const body = addFormats(new Ajv({ ...common, coerceTypes: false }))
      const other = addFormats(new Ajv({ ...common, coerceTypes: 'array' }))
      for (const schema of Object.values(externalSchemas)) {
        body.addSchema(schema as object)
        other.addSchema(schema as object)
      }
      return ({ schema, httpPart }) => (httpPart === 'body' ? body : other).compile(schema as object)
    }) as never
  }
}
