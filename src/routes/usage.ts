import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { NotFound } from '../domain/errors.ts'
import type { Caller } from '../plugins/auth.ts'
import { internal, invalidField, json, problem, unauthorized, unavailable } from '../schemas/common.ts'
import { UsageQuerySchema, UsageRowSchema } from '../schemas/limits.ts'
import { usageRow } from '../services/limits.ts'

const EXAMPLE = {
  caller: 'render-farm',
  date: '2026-12-01',
  tasks: 42,
  units: 73.5,
  active_tasks: 6,
  webhook_endpoints: 2,
  limits: {
    creates_per_minute: 600,
    max_active_tasks: 500,
    max_large_bodies: 2,
    max_sse_streams: 100,
    max_webhook_endpoints: 20,
    daily_units: 1000,
    weight: 3
  }
}

/** `GET /v1/usage` (docs/API.md, "Per-caller limits"): a caller's own row; an admin's view of every caller. */
const usage: FastifyPluginAsyncTypebox = async (app) => {
  const { store, limitStore, webhooks, config, clock } = app.deps
  const deps = { store, limitStore, webhooks, callers: config.callers }
  app.addSchema(UsageRowSchema)

  app.get('/usage', {
    onRequest: app.authenticate,
    schema: {
      tags: ['usage'],
      operationId: 'getUsage',
      summary: 'Today\'s tasks and units, open tasks and the limits, per caller',
      description: 'A caller gets its own row. An admin key gets one row per caller that has a key (API_KEYS, ' +
        'ADMIN_API_KEYS), or, with `?caller=`, that caller\'s. Today is the UTC day; the counters are ' +
        'deployment-wide (every replica reads the same Redis).',
      security: [{ bearer: [] }],
      querystring: UsageQuerySchema,
      response: {
        200: json('the rows, by caller name', Type.Object({ data: Type.Array(Type.Ref('UsageRow')) }),
          { data: [EXAMPLE] }),
        400: invalidField('invalid query', '/caller', 'must match pattern "^[A-Za-z0-9_.-]+$"', 'query'),
        401: unauthorized(),
        404: problem(404, '`?caller=` names another caller (a caller key sees only its own row)', {
          detail: 'caller not found'
        }),
        500: internal(),
        503: unavailable()
      }
    }
  }, async (request) => {
    const caller = request.caller as Caller
    const asked = request.query.caller
    // Another caller's row is 404, never 403 (docs/API.md, "Auth and roles").
    if (!caller.admin && asked !== undefined && asked !== caller.name) throw new NotFound('caller')
    const names = asked !== undefined
      ? [asked]
      : caller.admin ? [...new Set(config.apiKeys.map(k => k.caller))].sort() : [caller.name]
    const now = clock()
    return { data: await Promise.all(names.map(async name => await usageRow(deps, name, now))) }
  })
}
export default usage
