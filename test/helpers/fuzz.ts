/**
 * Requests generated from openapi/openapi.json for every operation (GitHub issue 13, item 10): values drawn from
 * each parameter's and body's schema (valid, at a boundary, or just past it), then mutated the ways a hostile or
 * broken client would: wrong types, very long and unpaired-surrogate strings, unknown and reserved names, deep
 * nesting, huge arrays, duplicate keys, truncated or garbage bytes, wrong or missing content types, and every
 * kind of Authorization header. The generator knows only the document, so a new route is fuzzed as soon as it is
 * in it.
 */
import fc from 'fast-check'

type Json = Record<string, unknown>
type Schema = Json

export interface Operation { id: string, method: string, path: string, op: Json }

/** One request, as `app.inject` takes it. */
export interface FuzzRequest {
  method: string
  url: string
  headers: Record<string, string>
  payload?: string | Buffer
}

/** Ids the requests may name: real ones (so a route gets past its 404) and ones that exist nowhere. */
export interface Pools {
  /** By path template, e.g. `/v1/videos/{id}` → the ids worth naming there. */
  ids: (path: string) => string[]
  /** Authorization headers a request may carry (besides the malformed ones generated here). */
  auth: string[]
  /** Query values worth sending by name, e.g. `token` → valid callback tokens. */
  query?: Record<string, string[]>
}

/** The depth of nesting and the length of an array a mutation makes at its largest (the figures). */
export const DEEP = 10_000
export const HUGE = 100_000

const isObj = (v: unknown): v is Json => v !== null && typeof v === 'object' && !Array.isArray(v)

export function operations (doc: Json): Operation[] {
  const out: Operation[] = []
  for (const [path, item] of Object.entries(doc.paths as Record<string, Record<string, Json>>)) {
    for (const [method, op] of Object.entries(item)) {
      if (typeof op.operationId === 'string') out.push({ id: op.operationId, method: method.toUpperCase(), path, op })
    }
  }
  return out
}

function resolve (doc: Json, schema: unknown): Schema {
  let s = schema
  for (let i = 0; i < 16 && isObj(s) && typeof s.$ref === 'string'; i++) {
    s = (s.$ref as string).replace(/^#\//, '').split('/').reduce<unknown>((o, k) => (o as Json)[k], doc)
  }
  return isObj(s) ? s : {}
}

// ─── values ──────────────────────────────────────────────────────────────────────────────────────────────────────

/** Strings a validator or a JSON encoder may choke on. */
const nastyString: fc.Arbitrary<string> = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 40 }), // lone surrogates: JSON.stringify writes them as \udxxx escapes
  fc.string({ unit: 'grapheme', maxLength: 40 }),
  fc.constantFrom('', ' ', '\u0000', '\ud800', 'a\udfffb', '\u202e', 'null', 'true', '0', '-1', '1e999', 'NaN',
    '__proto__', 'constructor', '../../etc/passwd', '%00', '$' + '{x}', '<script>', '\r\n\r\n', '\ufeff',
    '😀'.repeat(50),
    'https://', 'http://127.0.0.1/', 'data:image/png;base64,AAAA', 'Bearer x'),
  fc.integer({ min: 1, max: 300_000 }).map(n => 'x'.repeat(n))
)

/** Anything at all, of a type a field is unlikely to want. */
const hostile: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(null, true, false, 0, -0, -1, 1, 0.5, 2 ** 53, -(2 ** 53), 1e308, -1e308, 5e-324,
    [], {}, [[]], [null], { '': '' }),
  nastyString,
  fc.integer(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.anything({ maxDepth: 3, maxKeys: 5, withBigInt: false, withDate: false, withMap: false, withSet: false })
)

/** Property names: unknown, reserved, prototype names, very long, unpaired surrogates. */
const nastyName: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom('__proto__', 'constructor', 'prototype', 'callback_url', 'external_task_id', '', 'id', 'caller',
    'status', 'x'.repeat(5000)),
  fc.string({ unit: 'binary', minLength: 1, maxLength: 30 }),
  fc.integer({ min: 1, max: 3000 }).map(n => 'n'.repeat(n))
)

function withinLength (s: string, min: number, max: number): string {
  if (s.length > max) return s.slice(0, max)
  return s.length < min ? s + 'a'.repeat(min - s.length) : s
}

/**
 * A value of `schema`: mostly valid, sometimes at a boundary or one past it (lengths, sizes, minimum/maximum).
 * `depth` bounds recursion through nested schemas.
 */
export function valueOf (doc: Json, raw: unknown, depth = 0): fc.Arbitrary<unknown> {
  const s = resolve(doc, raw)
  if (depth > 6) return fc.constant(null)
  if (Array.isArray(s.enum)) return fc.constantFrom(...(s.enum as unknown[]))
  if ('const' in s) return fc.constant(s.const)
  const branches = (s.anyOf ?? s.oneOf) as unknown[] | undefined
  if (Array.isArray(branches)) return fc.oneof(...branches.map(b => valueOf(doc, b, depth + 1)))
  const type = Array.isArray(s.type) ? fc.constantFrom(...(s.type as string[])) : fc.constant(s.type)
  return type.chain(t => typed(doc, s, t as string | undefined, depth))
}

function typed (doc: Json, s: Schema, type: string | undefined, depth: number): fc.Arbitrary<unknown> {
  const num = (k: string) => typeof s[k] === 'number' ? s[k] as number : undefined
  switch (type) {
    case 'null': return fc.constant(null)
    case 'boolean': return fc.boolean()
    case 'integer':
    case 'number': {
      const min = num('minimum') ?? num('exclusiveMinimum') ?? -1e6
      const max = num('maximum') ?? num('exclusiveMaximum') ?? 1e6
      const inside = type === 'integer'
        ? fc.integer({ min: Math.ceil(min), max: Math.floor(max) })
        : fc.double({ min, max, noNaN: true })
      return fc.oneof({ weight: 4, arbitrary: inside }, fc.constantFrom(min, max, min - 1, max + 1, min + 0.5))
    }
    case 'string': {
      const min = num('minLength') ?? 0
      const max = num('maxLength') ?? 200
      const edges = fc.constantFrom(...new Set([min, Math.max(0, min - 1), max, max + 1])).map(n => 'a'.repeat(n))
      let inside: fc.Arbitrary<string>
      if (typeof s.pattern === 'string') inside = fc.stringMatching(new RegExp(s.pattern as string))
      else if (s.format === 'uri' || s['x-image'] !== undefined) {
        inside = fc.oneof(fc.constant('https://images.example.com/a.png'), fc.webUrl({ validSchemes: ['https'] }))
      } else if (s.format === 'date-time') {
        inside = fc.date({ min: new Date(0), max: new Date(4e12), noInvalidDate: true }).map(d => d.toISOString())
      } else inside = fc.string({ maxLength: Math.min(max, 40) })
      const examples = [s.example, s.default].filter(v => typeof v === 'string') as string[]
      return fc.oneof({ weight: 4, arbitrary: inside.map(v => withinLength(v, min, max)) }, edges,
        ...(examples.length > 0 ? [fc.constantFrom(...examples)] : []))
    }
    case 'array': {
      const min = num('minItems') ?? 0
      const max = num('maxItems') ?? 5
      const item = isObj(s.items) ? valueOf(doc, s.items, depth + 1) : hostile
      return fc.oneof(
        { weight: 4, arbitrary: fc.array(item, { minLength: min, maxLength: Math.min(max, min + 4) }) },
        fc.constantFrom(...new Set([Math.max(0, min - 1), max + 1])).chain(n =>
          fc.array(item, { minLength: n, maxLength: n })))
    }
    case 'object':
    case undefined: {
      const props = (isObj(s.properties) ? s.properties : {}) as Record<string, unknown>
      const required = Array.isArray(s.required) ? s.required as string[] : []
      const model: Record<string, fc.Arbitrary<unknown>> = {}
      for (const [k, v] of Object.entries(props)) model[k] = valueOf(doc, v, depth + 1)
      const record = fc.record(model, { requiredKeys: required.filter(k => k in model) })
      if (type === undefined && Object.keys(props).length === 0) return hostile
      const extra = isObj(s.additionalProperties)
        ? fc.dictionary(fc.string({ maxLength: 20 }), valueOf(doc, s.additionalProperties, depth + 1),
          { maxKeys: 4 })
        : fc.constant({})
      return fc.tuple(record, extra).map(([r, e]) => ({ ...e, ...r }))
    }
  }
  return hostile
}

// ─── mutations of a JSON tree ────────────────────────────────────────────────────────────────────────────────────

/** Marks in the tree that become text too large or too deep to build as a value (replaced after stringify). */
const DEEP_MARK = '\u0001deep\u0001'
const HUGE_MARK = '\u0001huge\u0001'

type Mutation =
  | { kind: 'replace', at: number, value: unknown }
  | { kind: 'drop', at: number }
  | { kind: 'add', at: number, name: string, value: unknown }
  | { kind: 'deep', at: number }
  | { kind: 'huge', at: number }

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('replace' as const), at: fc.nat(), value: hostile }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('drop' as const), at: fc.nat() }) },
  {
    weight: 3,
    arbitrary: fc.record({ kind: fc.constant('add' as const), at: fc.nat(), name: nastyName, value: hostile })
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('deep' as const), at: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('huge' as const), at: fc.nat() }) }
)

/** The containers and leaves of a tree, each with its parent and key, in a fixed order (bounded walk). */
function nodes (root: unknown): Array<{ parent: Json | unknown[] | null, key: string | number, value: unknown }> {
  const out: Array<{ parent: Json | unknown[] | null, key: string | number, value: unknown }> = []
  const stack: Array<{ parent: Json | unknown[] | null, key: string | number, value: unknown }> =
    [{ parent: null, key: '', value: root }]
  while (stack.length > 0 && out.length < 10_000) {
    const n = stack.pop() as (typeof out)[number]
    out.push(n)
    const parent = n.value
    if (Array.isArray(parent)) parent.forEach((v, i) => stack.push({ parent, key: i, value: v }))
    else if (isObj(parent)) for (const [k, v] of Object.entries(parent)) stack.push({ parent, key: k, value: v })
  }
  return out
}

/**
 * A value of its own: generated values may be shared between runs (constantFrom's `{}`), and a mutation in place
 * would otherwise tie them into a cycle. JSON.parse makes a `__proto__` key an own property, as a body would.
 */
const own = (v: unknown): unknown => v === undefined ? null : JSON.parse(JSON.stringify(v)) as unknown

function apply (root: unknown, m: Mutation): unknown {
  const all = nodes(root)
  const n = all[m.at % all.length]
  const set = (v: unknown) => {
    if (n.parent === null) { root = v; return }
    if (Array.isArray(n.parent)) n.parent[n.key as number] = v
    // defineProperty: a `__proto__` key must be a property of its own, as JSON.parse would make it.
    else Object.defineProperty(n.parent, n.key, { value: v, enumerable: true, writable: true, configurable: true })
  }
  switch (m.kind) {
    case 'replace': set(own(m.value)); break
    case 'deep': set(DEEP_MARK); break
    case 'huge': set(HUGE_MARK); break
    case 'drop':
      if (Array.isArray(n.parent)) n.parent.splice(n.key as number, 1)
      else if (n.parent !== null) delete (n.parent as Json)[n.key]
      break
    case 'add': {
      const target = isObj(n.value) ? n.value : isObj(n.parent) ? n.parent : null
      if (target !== null) {
        const value = own(m.value)
        Object.defineProperty(target, m.name, { value, enumerable: true, writable: true, configurable: true })
      }
    }
  }
  return root
}

function stringify (value: unknown): string {
  const text = JSON.stringify(value) ?? ''
  // Built as text: a value this deep would overflow JSON.stringify, and both would waste the generator's time.
  return text
    .replaceAll(JSON.stringify(DEEP_MARK), '{"a":'.repeat(DEEP) + '1' + '}'.repeat(DEEP))
    .replaceAll(JSON.stringify(HUGE_MARK), '[' + '{"image":"x"},'.repeat(HUGE - 1) + '{"image":"x"}]')
}

/** Changes to the body's text itself, after the tree is written. */
type TextMutation =
  | { kind: 'none' }
  | { kind: 'duplicate', name: string, value: unknown }
  | { kind: 'truncate', at: number }
  | { kind: 'garbage', bytes: Uint8Array }
  | { kind: 'empty', text: string }
  | { kind: 'wrap', before: string, after: string }
  | { kind: 'badUtf8', at: number }

const textMutation: fc.Arbitrary<TextMutation> = fc.oneof(
  { weight: 12, arbitrary: fc.constant({ kind: 'none' as const }) },
  fc.record({
    kind: fc.constant('duplicate' as const),
    name: fc.constantFrom('prompt', 'image_list', 'image', 'url',
      'metadata', 'task_id', 'since', 'upstream_task_id', '__proto__'),
    value: hostile
  }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('garbage' as const), bytes: fc.uint8Array({ maxLength: 200 }) }),
  fc.record({
    kind: fc.constant('empty' as const),
    text: fc.constantFrom('', ' ', '\n', 'null', '0', '""', '[]', '{}')
  }),
  fc.record({
    kind: fc.constant('wrap' as const),
    before: fc.constantFrom('\ufeff', ' ', '[', '{"a":', '\u0000'),
    after: fc.constantFrom('', ']', '}', ',', ' x', '\u0000')
  }),
  fc.record({ kind: fc.constant('badUtf8' as const), at: fc.nat() })
)

function applyText (text: string, m: TextMutation): string | Buffer {
  switch (m.kind) {
    case 'none': return text
    // A key twice: JSON.parse keeps the last, a careless reader the first.
    case 'duplicate': return text.startsWith('{') && text.length > 2
      ? `{${JSON.stringify(m.name)}:${JSON.stringify(m.value) ?? 'null'},${text.slice(1)}`
      : text
    case 'truncate': return text.slice(0, m.at % (text.length + 1))
    case 'garbage': return Buffer.from(m.bytes)
    case 'empty': return m.text
    case 'wrap': return m.before + text + m.after
    case 'badUtf8': {
      const at = m.at % (text.length + 1)
      return Buffer.concat([Buffer.from(text.slice(0, at)), Buffer.from([0xff, 0xc3, 0x28, 0xed, 0xa0, 0x80]),
        Buffer.from(text.slice(at))])
    }
  }
}

// ─── the request around it ───────────────────────────────────────────────────────────────────────────────────────

const CONTENT_TYPES = ['application/json', 'application/json; charset=utf-8', 'APPLICATION/JSON',
  'application/json; charset=latin1', 'text/plain', 'text/plain; charset=utf-8', 'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x', 'application/octet-stream', 'application/problem+json', 'application/jsonx',
  'application/json;', ';', 'json', 'text/html', '*/*']

/** Header values Node accepts on the wire (inject refuses others before the app sees them). */
const headerValue: fc.Arbitrary<string> = fc.oneof(
  fc.string({ maxLength: 40 }).map(s => s.replace(/[^\t\x20-\x7e]/g, '')),
  fc.string({ unit: 'binary', maxLength: 40 }).map(s => s.replace(/[^\t\x20-\x7e\x80-\xff]/g, '')),
  fc.constantFrom('', ' ', 'x'.repeat(600), '0', '-1', 'null', '9'.repeat(40))
)

/** Authorization headers: none, malformed, a caller's, another caller's, an admin's. */
function authArb (pools: Pools): fc.Arbitrary<string | undefined> {
  const real = pools.auth
  return fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom(...real) },
    fc.constant(undefined),
    fc.constantFrom('', 'Bearer', 'Bearer ', 'Basic YWxpY2U6eA==', 'Token abc', 'bearer', 'Bearer a b',
      'Bearer ' + 'k'.repeat(513), 'Bearer\tx', 'Bearer \u00ff\u00fe'),
    fc.constantFrom(...real).chain(h => fc.constantFrom(
      h.toLowerCase(), h.replace('Bearer ', 'Bearer   '), h + ' ', h.slice(0, -1), h + 'x',
      h.replace('Bearer ', ''), `${h}, ${h}`)),
    headerValue.map(v => `Bearer ${v}`)
  )
}

/** A path parameter: a real id, one that exists nowhere, or junk (some of it pre-encoded, some raw). */
function idArb (pool: string[]): fc.Arbitrary<string> {
  const encoded = fc.oneof(
    fc.uuid(),
    fc.string({ maxLength: 60 }),
    fc.string({ unit: 'binary', maxLength: 20 }).map(s => s.replace(/[\ud800-\udfff]/g, '')),
    fc.constantFrom('x'.repeat(100), 'x'.repeat(101), 'x'.repeat(2000), '0', '-1', ' ', '.', 'null', '__proto__',
      'constructor')
  ).map(encodeURIComponent)
  const raw = fc.constantFrom('%', '%E0%A4%A', '%00', '%2F', '%2e%2e', '..', '%ZZ', '%C0%AF', '%ED%A0%80', 'a;b',
    'a,b', '*', '%F0%9F%98%80', '%FF')
  return pool.length > 0
    ? fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...pool).map(encodeURIComponent) }, encoded, raw)
    : fc.oneof(encoded, raw)
}

function queryValue (doc: Json, schema: unknown, extra: string[]): fc.Arbitrary<string> {
  const fromSchema = valueOf(doc, schema).map(v => typeof v === 'string' ? v : JSON.stringify(v) ?? '')
  return fc.oneof(
    { weight: 4, arbitrary: fromSchema },
    ...(extra.length > 0 ? [{ weight: 4, arbitrary: fc.constantFrom(...extra) }] : []),
    nastyString,
    hostile.map(v => JSON.stringify(v) ?? '')
  )
}

interface Param { in: string, name: string, schema?: unknown, required?: boolean }

/**
 * Every request of one operation: a quarter of them clean (a real caller, values of the schemas, no mutation), so
 * the operation's own code runs and not only its refusals; the rest mutated.
 */
export function requestArb (doc: Json, operation: Operation, pools: Pools): fc.Arbitrary<FuzzRequest> {
  return fc.oneof({ weight: 1, arbitrary: build(doc, operation, pools, true) },
    { weight: 3, arbitrary: build(doc, operation, pools, false) })
}

function build (doc: Json, operation: Operation, pools: Pools, clean: boolean): fc.Arbitrary<FuzzRequest> {
  const params = (operation.op.parameters ?? []) as Param[]
  const pathParams = params.filter(p => p.in === 'path')
  const queryParams = params.filter(p => p.in === 'query')
  const headerParams = params.filter(p => p.in === 'header')
  const content = (operation.op.requestBody as Json | undefined)?.content as Record<string, Json> | undefined
  const media = content?.['application/json']

  const path = fc.tuple(...pathParams.map(() => idArb(pools.ids(operation.path)))).map(values => {
    let url = operation.path
    pathParams.forEach((p, i) => { url = url.replace(`{${p.name}}`, values[i]) })
    return url
  })

  // Each parameter absent, once, or twice (a repeated name arrives as an array); plus names nobody declared.
  const extraValues = (p: Param) => pools.query?.[p.name] ?? []
  const value = (p: Param) => clean
    ? (extraValues(p).length > 0 ? fc.constantFrom(...extraValues(p)) : valueOf(doc, p.schema).map(v => String(v)))
    : queryValue(doc, p.schema, extraValues(p))
  const one = (p: Param) => fc.option(fc.array(value(p), { minLength: 1, maxLength: clean ? 1 : 2 }), { freq: 3 })
    .map(vs => (vs ?? []).map(v => [p.name, v] as [string, string]))
  const unknown = clean
    ? fc.constant([])
    : fc.array(fc.tuple(fc.constantFrom('x', '__proto__', 'constructor', 'limit[]', ''), headerValue), { maxLength: 1 })
  const query = fc.tuple(fc.tuple(...queryParams.map(one)), unknown).map(([known, extra]) => {
    const pairs = [...known.flat(), ...extra]
    return pairs.length === 0 ? '' : '?' + new URLSearchParams(pairs).toString()
  })

  const headers = fc.tuple(clean ? fc.constantFrom(...pools.auth) : authArb(pools),
    fc.tuple(...headerParams.map(p => fc.option(fc.oneof(
      valueOf(doc, p.schema).map(v => String(v).replace(/[^\t\x20-\x7e]/g, '')), ...(clean ? [] : [headerValue])),
    { freq: 2 }))),
    fc.option(fc.constantFrom('application/json', 'text/event-stream', '*/*', 'text/html', 'application/xml', ''),
      { freq: 2 }))
    .map(([authorization, values, accept]) => {
      const h: Record<string, string> = {}
      if (authorization !== undefined) h.authorization = authorization
      headerParams.forEach((p, i) => { if (values[i] !== null) h[p.name] = values[i] as string })
      if (accept !== null) h.accept = accept
      return h
    })

  // A declared body: valid-ish values of its schema (or its example), mutated 0–3 times. Routes without one get
  // a body now and then too: they must refuse it as problem+json, not choke on it.
  const tree = media === undefined
    ? (clean ? fc.constant(undefined) : fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, hostile))
    : fc.oneof(fc.constant(media.example), valueOf(doc, media.schema))
  const body = clean
    ? tree.map(value => ({ payload: value === undefined ? undefined : stringify(value), contentType: 'default' }))
    : fc.tuple(tree, fc.array(mutation, { maxLength: 3 }), textMutation,
      fc.oneof({ weight: 8, arbitrary: fc.constant('default') }, fc.constant('none'),
        fc.constantFrom(...CONTENT_TYPES)))
      .map(([value, mutations, textMut, contentType]) => {
        const bodiless = value === undefined && media === undefined && textMut.kind === 'none'
        if (bodiless) return { payload: undefined, contentType }
        // A copy: the example belongs to the document, which every run shares.
        let v = own(value)
        for (const m of mutations) v = apply(v, m)
        return { payload: applyText(stringify(v), textMut), contentType }
      })

  return fc.tuple(path, query, headers, body).map(([p, q, h, b]) => {
    const headers = { ...h }
    if (b.payload !== undefined && b.contentType === 'default') headers['content-type'] = 'application/json'
    else if (b.contentType !== 'default' && b.contentType !== 'none') headers['content-type'] = b.contentType
    return { method: operation.method, url: p + q, headers, ...(b.payload !== undefined && { payload: b.payload }) }
  })
}

/** A request as a line to reproduce it by hand (bodies cut: some are megabytes). */
export function describeRequest (r: FuzzRequest): string {
  const body = r.payload === undefined
    ? ''
    : ` body(${r.payload.length}${Buffer.isBuffer(r.payload) ? ' bytes' : ' chars'}): ` +
      JSON.stringify(r.payload.toString().slice(0, 300))
  const headers = Object.entries(r.headers)
    .map(([k, v]) => `${k}: ${k === 'authorization' ? v.replace(/(\S{6})\S+/g, '$1…') : v.slice(0, 80)}`)
  return `${r.method} ${r.url.slice(0, 300)} [${headers.join(' | ')}]${body}`
}
