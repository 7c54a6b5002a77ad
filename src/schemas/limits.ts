/** Schemas of the per-caller limits (docs/API.md, "Per-caller limits"): the 429 they answer and the usage row. */
import { Type } from 'typebox'
import { LIMIT_FIELDS } from '../config/callers.ts'
import { HEADERS, problemExample } from './common.ts'

/** The 429 `CALLER_LIMIT` of one limit, with `limit`/`limit_value` in its example and `Retry-After`. */
export function callerLimitProblem (description: string, limit: string, value: number) {
  const example = {
    ...problemExample(429, {
      code: 'CALLER_LIMIT', detail: `caller limit ${limit} (${value}) reached; retry after Retry-After`
    }),
    limit,
    limit_value: value
  }
  return {
    description,
    headers: { 'Retry-After': { ...HEADERS['Retry-After'].schema, description: HEADERS['Retry-After'].description } },
    content: { 'application/problem+json': { schema: Type.Ref('Problem'), example } }
  }
}

const count = (description: string) => Type.Integer({ minimum: 0, description })

export const UsageRowSchema = Type.Object({
  caller: Type.String({ description: 'the caller (the name before `:` in API_KEYS)' }),
  date: Type.String({ format: 'date', description: 'today, UTC: the day `tasks` and `units` count' }),
  tasks: count('tasks created today (UTC), canceled ones included'),
  units: Type.Number({
    minimum: 0, description: 'upstream units charged today (UPSTREAM_UNITS), net of those given back by a cancel'
  }),
  active_tasks: count('tasks not yet terminal, now (what max_active_tasks counts)'),
  webhook_endpoints: count('registered webhook endpoints (what max_webhook_endpoints counts)'),
  limits: Type.Object(Object.fromEntries(Object.keys(LIMIT_FIELDS).map(f => [f, Type.Integer({ minimum: 0 })])), {
    description: 'the effective limits: CALLER_LIMITS over the CALLER_* defaults; 0 = no limit (`weight` ≥ 1)'
  })
}, { $id: 'UsageRow' })

export const UsageQuerySchema = Type.Object({
  caller: Type.Optional(Type.String({
    minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.-]+$', description: 'one caller\'s row (admins: anyone\'s)'
  }))
}, { additionalProperties: false })
