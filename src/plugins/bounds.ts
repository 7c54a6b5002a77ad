/**
 * Bounds on what a request body can cost before it is answered (GitHub issue 13): the JSON parser refuses bodies
 * nested deeper than MAX_JSON_DEPTH and strings that are not well-formed Unicode, a pre-check refuses arrays and
 * objects over their schema's `maxItems` / `maxProperties` before Ajv looks at a single item, and every problem
 * lists at most MAX_LISTED_ERRORS field errors with names the caller chose cut to MAX_NAME_CHARS.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { GatewayError, InvalidRequest, type FieldError } from '../domain/errors.ts'

/** Deeper than any body a route accepts (metadata included); JSON.stringify of a much deeper value overflows. */
export const MAX_JSON_DEPTH = 32
/** Field errors listed in one problem; the rest are counted in `errors_omitted`. */
export const MAX_LISTED_ERRORS = 50
/** A caller-chosen name (an unknown property) is echoed at most this long. */
export const MAX_NAME_CHARS = 64
/** The detail of an unknown property, as Ajv's errors get it too (src/plugins/errors.ts). */
export const NOT_ACCEPTED = 'is not an accepted field'
/** A pointer is echoed at most this long (a deep path of long names would otherwise be as long as the body). */
export const MAX_POINTER_CHARS = 256

type Obj = Record<string, unknown>
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v)
// Node 20 has these (ES2024); the project's lib is ES2023.
const wellFormed = (s: string): boolean => (s as unknown as { isWellFormed: () => boolean }).isWellFormed()
const toWellFormed = (s: string): string => (s as unknown as { toWellFormed: () => string }).toWellFormed()

/** RFC 6901 escaping of one segment, cut to MAX_NAME_CHARS and made well-formed so it can always be echoed. */
export function segment (name: string): string {
  const short = name.length > MAX_NAME_CHARS ? name.slice(0, MAX_NAME_CHARS) + '…' : name
  return toWellFormed(short).replace(/~/g, '~0').replace(/\//g, '~1')
}

/** The field errors as a problem lists them: at most MAX_LISTED_ERRORS, pointers cut, and how many were left off. */
export function boundErrors (errors: FieldError[]): { errors: FieldError[], omitted: number } {
  const listed = errors.slice(0, MAX_LISTED_ERRORS).map(e => e.pointer.length > MAX_POINTER_CHARS
    ? { ...e, pointer: toWellFormed(e.pointer.slice(0, MAX_POINTER_CHARS)) + '…' }
    : e)
  return { errors: listed, omitted: Math.max(0, errors.length - MAX_LISTED_ERRORS) }
}

/** A string or container on the walk's stack; its pointer is built from the chain only when it has a problem. */
interface Frame { value: unknown, parent: Frame | null, key: string | number, depth: number }

function pointerOf (frame: Frame): string {
  const parts: string[] = []
  for (let f: Frame | null = frame; f !== null && f.parent !== null; f = f.parent) {
    parts.push(typeof f.key === 'number' ? String(f.key) : segment(f.key))
  }
  return parts.length === 0 ? '/' : '/' + parts.reverse().join('/')
}

/**
 * Walks a parsed body once, without recursion (a deep body must not overflow the stack here either): containers
 * deeper than MAX_JSON_DEPTH, keys and strings that are not well-formed Unicode (Redis's JSON decoder refuses a lone
 * surrogate, and Kling would), and the prototype keys Fastify's own parser refuses. Numbers, booleans and nulls are
 * never put on the stack and no pointer is built unless it is listed: a 10 MB array of numbers costs a loop, not
 * millions of strings (bench/benches/hostile-bodies.ts measured 10 s of blocked event loop before).
 */
export function checkJsonValue (root: unknown): FieldError[] {
  const errors: FieldError[] = []
  const problem = (frame: Frame, detail: string) => {
    errors.push({ pointer: pointerOf(frame), detail, location: 'body' })
  }
  const walked = (v: unknown) => typeof v === 'string' || (v !== null && typeof v === 'object')
  if (!walked(root)) return errors
  const stack: Frame[] = [{ value: root, parent: null, key: '', depth: 1 }]
  while (stack.length > 0) {
    const frame = stack.pop() as Frame
    const value = frame.value
    if (typeof value === 'string') {
      if (!wellFormed(value)) problem(frame, 'must be well-formed Unicode (it has a lone surrogate)')
      continue
    }
    if (frame.depth > MAX_JSON_DEPTH) {
      problem(frame, `nests deeper than ${MAX_JSON_DEPTH} levels of objects and arrays`)
      continue
    }
    const depth = frame.depth + 1
    if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) {
        if (walked(value[i])) stack.push({ value: value[i], parent: frame, key: i, depth })
      }
      continue
    }
    const obj = value as Obj
    const keys = Object.keys(obj)
    for (let i = keys.length - 1; i >= 0; i--) {
      const key = keys[i]
      const child: Frame = { value: obj[key], parent: frame, key, depth }
      if (!wellFormed(key)) problem(child, 'is a name that is not well-formed Unicode (it has a lone surrogate)')
      else if (key === '__proto__') problem(child, 'is not an accepted name')
      else if (key === 'constructor' && isObj(obj[key]) && 'prototype' in (obj[key] as Obj)) {
        problem(child, 'is not an accepted value')
      } else if (walked(child.value)) stack.push(child)
    }
  }
  return errors
}

/** Where JSON.parse broke, from its message, without echoing any of the body (V8 quotes a snippet of it). */
function whereItBroke (message: string, text: string): string {
  if (/end of JSON input/.test(message)) return 'it ends before the JSON value is complete'
  const at = /at position (\d+)/.exec(message)
  if (at !== null) return `it breaks at character ${at[1]}`
  // `Unexpected token 'x', ..."<10 before>x<10 after>"... is not valid JSON`: the snippet locates the position.
  const snippet = /, (\.\.\.)?"([\s\S]*)"(\.\.\.)? is not valid JSON$/.exec(message)
  if (snippet !== null) {
    const [, before, inner] = snippet
    const start = text.indexOf(inner)
    if (start >= 0 && before !== undefined) return `it breaks at character ${start + 10}`
    if (start === 0 && snippet[3] !== undefined) return `it breaks at character ${Math.max(0, inner.length - 10)}`
  }
  return 'it has a character JSON does not allow'
}

/**
 * Parses a JSON body and walks it (checkJsonValue); the first of the gateway's 400s a body can get. `parse` is
 * JSON.parse unless a route needs another reading (the callback keeps long numeric ids exact).
 */
export function parseJsonBody (text: string, parse: (text: string) => unknown = JSON.parse): unknown {
  if (text.trim() === '') {
    throw new GatewayError('INVALID_JSON', 400, 'the body is empty but its Content-Type is application/json: ' +
      'send a JSON object, or no body and no Content-Type')
  }
  let value: unknown
  try {
    value = parse(text)
  } catch (err) {
    throw new GatewayError('INVALID_JSON', 400,
      `the body is not valid JSON: ${whereItBroke((err as Error).message, text)}; send one JSON object`)
  }
  const errors = checkJsonValue(value)
  if (errors.length > 0) throw new InvalidRequest(errors)
  return value
}

/**
 * Array lengths and object sizes against the body schema, before Ajv runs: with `allErrors` Ajv checks every item
 * of an array that already failed `maxItems`, and the create route's image checks would decode each of them. An
 * array (object) more than MAX_LISTED_ERRORS items (properties) over its limit is refused by its size alone; a
 * smaller overrun costs little, so Ajv still lists it beside every other bad field. Arrays within that are walked
 * item by item (each bounded in turn).
 */
export function checkSizes (schema: unknown, value: unknown, pointer: string, out: FieldError[]): void {
  if (!isObj(schema)) return
  if (Array.isArray(value)) {
    if (typeof schema.maxItems === 'number' && value.length > schema.maxItems + MAX_LISTED_ERRORS) {
      const detail = `must NOT have more than ${schema.maxItems} items`
      out.push({ pointer: pointer || '/', detail, location: 'body' })
      return
    }
    const items = schema.items
    if (isObj(items)) for (let i = 0; i < value.length; i++) checkSizes(items, value[i], `${pointer}/${i}`, out)
    return
  }
  if (!isObj(value)) return
  const keys = Object.keys(value)
  if (typeof schema.maxProperties === 'number' && keys.length > schema.maxProperties + MAX_LISTED_ERRORS) {
    out.push({
      pointer: pointer || '/', detail: `must NOT have more than ${schema.maxProperties} properties`, location: 'body'
    })
    return
  }
  const properties = schema.properties
  if (!isObj(properties)) return
  // More than MAX_LISTED_ERRORS unknown names are the answer on their own: Ajv would make an error of each (and
  // every check after it would still run) to list 50 of them.
  if (schema.additionalProperties === false) {
    const unknown = keys.filter(k => !Object.hasOwn(properties, k))
    if (unknown.length > MAX_LISTED_ERRORS) {
      for (const k of unknown) out.push({ pointer: `${pointer}/${segment(k)}`, detail: NOT_ACCEPTED, location: 'body' })
      return
    }
  }
  // Fewer unknown names are Ajv's to report beside every other bad field; only the known ones are walked.
  for (const key of Object.keys(properties)) {
    if (Object.hasOwn(value, key)) checkSizes(properties[key], value[key], `${pointer}/${segment(key)}`, out)
  }
}

/** The JSON parser and the size pre-check, for every route of `app` (called from the errors plugin). */
export function boundBodies (app: FastifyInstance): void {
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => {
    try {
      done(null, parseJsonBody(body as string))
    } catch (err) {
      done(err as Error, undefined)
    }
  })
  // Only on routes with a body schema, which it closes over: a GET pays nothing (request.routeOptions builds an
  // object on every read). Callback style: an async hook costs every request a promise and a tick.
  app.addHook('onRoute', route => {
    const schema = (route.schema as { body?: unknown } | undefined)?.body
    if (schema === undefined) return
    const own = route.preValidation === undefined ? [] : [route.preValidation].flat()
    route.preValidation = [(request, reply, done) => { checkBody(schema, request, done) }, ...own]
  })
}

function checkBody (schema: unknown, request: FastifyRequest, done: (err?: Error) => void): void {
  if (request.body === undefined) { done(); return }
  const errors: FieldError[] = []
  checkSizes(schema, request.body, '', errors)
  if (errors.length === 0) { done(); return }
  const n = errors.length
  done(new InvalidRequest(errors, errors.every(e => e.detail === NOT_ACCEPTED)
    ? `${n} fields are not accepted (nothing else was checked)`
    : `${n} field${n === 1 ? ' is' : 's are'} over ${n === 1 ? 'its' : 'their'} size limit ` +
      '(nothing else was checked)'))
}
