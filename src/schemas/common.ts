import { Type, type TSchema } from 'typebox'
import { problemFields, type FieldError } from '../domain/errors.ts'

/** RFC 9457 problem details, as every error of ours is answered (src/plugins/errors.ts shapes them all). */
export const ProblemSchema = Type.Object({
  type: Type.String({ description: '`urn:kling-gateway:problem:` and the code in lower case' }),
  title: Type.String({ description: 'the HTTP reason phrase of `status`' }),
  status: Type.Integer({ description: 'the HTTP status, repeated' }),
  detail: Type.String({ description: 'what went wrong, for people; do not parse it' }),
  code: Type.String({ description: 'a stable SCREAMING_SNAKE code for programs (INVALID_REQUEST, …)' }),
  errors: Type.Optional(Type.Array(Type.Object({
    pointer: Type.String({ description: 'JSON pointer into the request part named by location' }),
    detail: Type.String(),
    location: Type.Optional(Type.Union([
      Type.Literal('body'), Type.Literal('query'), Type.Literal('params'), Type.Literal('headers')
    ]))
  }), {
    description: 'one entry per invalid field (400 only); every invalid field is listed, not only the first, ' +
      'up to 50'
  })),
  errors_omitted: Type.Optional(Type.Integer({
    minimum: 1, description: 'how many more invalid fields there are than `errors` lists (only past 50)'
  })),
  limit: Type.Optional(Type.String({
    description: 'CALLER_LIMIT only: which per-caller limit was reached (a `CALLER_LIMITS` field name)'
  })),
  limit_value: Type.Optional(Type.Number({ description: 'CALLER_LIMIT only: the value of that limit' }))
}, { $id: 'Problem', description: 'application/problem+json (RFC 9457)' })

/**
 * Response headers declared once under `components.headers`; a response names them in its `headers` and
 * src/plugins/swagger.ts turns each into a `$ref` (Fastify ignores `headers` beside `content`).
 */
export const HEADERS = {
  'Retry-After': {
    description: 'seconds to wait before trying again',
    schema: { type: 'integer', minimum: 0 },
    example: 1
  },
  Location: {
    description: 'the task\'s own URL, `/v1/videos/{id}`',
    schema: { type: 'string' },
    example: '/v1/videos/0f8c2a8e-5b7d-4c1e-9a3f-6d2b1e4c7a90'
  },
  'idempotent-replayed': {
    description: '`true` when an earlier request with the same Idempotency-Key made this task; absent otherwise',
    schema: { type: 'string', enum: ['true'] },
    example: 'true'
  },
  'WWW-Authenticate': {
    description: 'the scheme to authenticate with',
    schema: { type: 'string', enum: ['Bearer'] },
    example: 'Bearer'
  }
} as const
export type HeaderName = keyof typeof HEADERS

const headerBlock = (names: HeaderName[]) => names.length === 0
  ? {}
  : { headers: Object.fromEntries(names.map(n => [n, { ...HEADERS[n].schema, description: HEADERS[n].description }])) }

/** A JSON response with its example (every response in the document has one). */
export function json (description: string, schema: TSchema, example: unknown, headers: HeaderName[] = []) {
  return { description, ...headerBlock(headers), content: { 'application/json': { schema, example } } }
}

/**
 * The example problem of each status, as src/plugins/errors.ts would answer it; routes override code and detail
 * (and must give a code for a status without a default here, such as 409: each route's conflict is its own).
 */
const PROBLEMS: Partial<Record<number, { code: string, detail: string, errors?: FieldError[] }>> = {
  400: {
    code: 'INVALID_REQUEST',
    detail: '2 invalid fields',
    errors: [
      { pointer: '/image_list', detail: 'must NOT have fewer than 2 items', location: 'body' },
      {
        pointer: '/callback_url',
        detail: 'is set by the gateway (it receives CometAPI\'s callbacks itself); use webhook_url to be notified',
        location: 'body'
      }
    ]
  },
  401: { code: 'UNAUTHORIZED', detail: 'a valid bearer API key is required' },
  404: { code: 'NOT_FOUND', detail: 'task not found' },
  // Fastify refuses these itself; src/plugins/errors.ts maps them to our codes and details.
  413: { code: 'BODY_TOO_LARGE', detail: 'the body is larger than this route\'s limit of 1048576 bytes' },
  415: {
    code: 'UNSUPPORTED_MEDIA_TYPE',
    detail: 'the body has no Content-Type: send Content-Type: application/json (or text/plain)'
  },
  416: { code: 'RANGE_NOT_SATISFIABLE', detail: 'the video has 1048576 bytes' },
  422: { code: 'IDEMPOTENCY_KEY_REUSED', detail: 'this Idempotency-Key was used with a different request body' },
  429: { code: 'TOO_MANY_CALLBACKS', detail: 'too many callbacks for this task' },
  500: { code: 'INTERNAL', detail: 'the gateway failed to handle this request; it has been logged' },
  503: { code: 'UNAVAILABLE', detail: 'storage is briefly unavailable; retry after Retry-After' }
}
const PROBLEM_HEADERS: Record<number, HeaderName[]> = {
  401: ['WWW-Authenticate'], 429: ['Retry-After'], 503: ['Retry-After']
}

interface ProblemOverrides { code?: string, detail?: string, errors?: FieldError[], headers?: HeaderName[] }

/** An example problem+json body, exactly as sendProblem shapes it. */
export function problemExample (status: number, over: ProblemOverrides = {}) {
  const { code, detail, errors } = { ...PROBLEMS[status], ...over }
  if (code === undefined || detail === undefined) throw new Error(`problem(${status}) needs a code and a detail`)
  return { ...problemFields(status, code, detail), ...(errors !== undefined && { errors }) }
}

/** A problem+json response of one status, described for one route, with its example and usual headers. */
export function problem (status: number, description: string, over: ProblemOverrides = {}) {
  return {
    description,
    ...headerBlock(over.headers ?? PROBLEM_HEADERS[status] ?? []),
    content: { 'application/problem+json': { schema: Type.Ref('Problem'), example: problemExample(status, over) } }
  }
}

/** A 400 whose example names one invalid field. */
export const invalidField = (description: string, pointer: string, detail: string, location: FieldError['location']) =>
  problem(400, description, { detail: '1 invalid field', errors: [{ pointer, detail, location }] })

/** Answers any route can give: an unexpected failure. */
export const internal = () =>
  problem(500, 'an unexpected failure; logged with the request id, nothing sensitive is answered')

/** Answers of a route that reads Redis: it is unreachable, failing over or loading. */
export const unavailable = (extra = '') =>
  problem(503, `Redis is unreachable, failing over or loading${extra}; retry after Retry-After`)

/**
 * Answers about the body itself. Fastify parses a body on any POST or DELETE that sends one, so these apply to
 * routes without a body schema too (`{}` is fine; a 2 MB text/plain body is not).
 */
export const bodyProblems = (limit: string) => ({
  400: problem(400, 'invalid request: the body is not JSON, or a field is invalid (every one is listed in `errors`)'),
  413: problem(413, `the body is larger than ${limit}`),
  415: problem(415, 'a body of a type the gateway does not read (it reads `application/json` and `text/plain`)')
})

/** 401 for a missing, malformed or unknown bearer key. */
export const unauthorized = () => problem(401, 'missing or unknown API key')

/** 403 for an admin key without the operator scope asking to change another caller's resource (src/plugins/auth.ts). */
export const operatorScopeRequired = (what: string) => problem(403,
  `an admin key (not an operator key) asked to change another caller's ${what}; it may only read it`, {
    code: 'OPERATOR_SCOPE_REQUIRED',
    detail: `this ${what} belongs to another caller: an admin key may read it, only an operator key ` +
      '(OPERATOR_API_KEYS) may change it'
  })

/** `?sig=` of a signed link (src/services/links.ts): the content and events routes take it instead of a key. */
export const LinkSigSchema = Type.String({
  maxLength: 200,
  pattern: '^[A-Za-z0-9_.-]+$',
  description: 'a signed link (`POST /v1/videos/{id}/links`), instead of the Authorization header; a credential'
})
