/**
 * The create routes' JSON body parser (issue 15, "large creates streamed"). A body of at most LARGE_BODY_BYTES is
 * read whole and parsed as every route's is (src/plugins/bounds.ts parseJsonBody). A larger one (or one without a
 * Content-Length) is read as it arrives: its image strings past DIVERT_CHARS are decoded straight into their parked
 * place under a task id drawn now (src/domain/json-divert.ts, image-intake.ts), and the rest, a skeleton of a few KB,
 * is parsed as a small body is. So the raw body, the parsed JSON and the decoded images are never held at once: what
 * one large create holds is a chunk of the body and a part of one image.
 *
 * Until a stored task owns them the parts are reserved and pending as a small create's images are (parked-4.lua);
 * every way out but a stored task frees them: a failed parse here, any answer but a new task (`releaseIntake`, the
 * route's onResponse), and the sweep after a crash.
 */
import { randomBytes } from 'node:crypto'
import { StringDecoder } from 'node:string_decoder'
import type { Readable } from 'node:stream'
import { errorCodes, type FastifyRequest } from 'fastify'
import { GatewayError, Unavailable } from '../domain/errors.ts'
import { Base64Intake } from '../domain/image-intake.ts'
import type { StreamedImages } from '../domain/create.ts'
import { JsonDivert } from '../domain/json-divert.ts'
import { parseJsonBody } from '../plugins/bounds.ts'
import type { TaskStore } from '../store/tasks.ts'
import type { VideoKind } from '../domain/kinds.ts'

/** An image string longer than this is streamed; a shorter one stays in the body (a URL, a small image). */
export const DIVERT_CHARS = 64 * 1024

/** Redis writes (parts of ~768 KB) a streamed body may have in flight: what it holds beyond its chunk. */
const MAX_IN_FLIGHT = 3

/** What a streamed body left for the route: its task id, and each diverted image by the placeholder standing in. */
export interface Intake {
  id: string
  images: StreamedImages
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The kind a create route makes: its body schema says where the images a large body streams are. */
    kind?: VideoKind
  }
}

const intakes = new WeakMap<FastifyRequest, Intake>()

/** The streamed intake of `request`, if its body was streamed. */
export function intakeOf (request: FastifyRequest): Intake | undefined {
  return intakes.get(request)
}

export interface IntakeDeps {
  store: TaskStore
  ids: () => string
  parkedMaxBytes: number
  /** LARGE_BODY_BYTES: bodies up to this are read whole. */
  largeBodyBytes: number
  /** The body schema of the route's kind; null for a route whose body is never streamed. */
  schemaOf: (request: FastifyRequest) => Record<string, unknown> | null
}

const notJson = () => new GatewayError('INVALID_JSON', 400,
  'the body is not valid JSON: it has a character JSON does not allow; send one JSON object')
const parkedFull = () => new Unavailable('too many images are waiting for upstream capacity; retry later', 30)

/** The parser for `application/json` on the create routes (Fastify's `(request, payload)` form). */
export function createBodyParser (deps: IntakeDeps) {
  return async function parse (request: FastifyRequest, payload: Readable): Promise<unknown> {
    const declared = Number(request.headers['content-length'] ?? Number.NaN)
    const limit = request.routeOptions.bodyLimit ?? Infinity
    if (declared > limit) throw new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE()
    const schema = deps.schemaOf(request)
    if (schema === null || declared <= deps.largeBodyBytes) return await whole(payload, declared, limit)
    return await streamed(deps, request, payload, schema, Number.isFinite(declared) ? declared : limit)
  }
}

/** A small body, read and parsed as Fastify's string parser and parseJsonBody would. */
async function whole (payload: Readable, declared: number, limit: number): Promise<unknown> {
  const chunks: Buffer[] = []
  let received = 0
  for await (const chunk of payload as AsyncIterable<Buffer>) {
    received += chunk.length
    if (received > limit) throw new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE()
    chunks.push(chunk)
  }
  if (Number.isFinite(declared) && received !== declared) throw new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH()
  return parseJsonBody(Buffer.concat(chunks, received).toString('utf8'))
}

async function streamed (deps: IntakeDeps, request: FastifyRequest, payload: Readable,
  schema: Record<string, unknown>, bound: number): Promise<unknown> {
  const { store } = deps
  const intake: Intake = { id: deps.ids(), images: new Map() }
  const id = intake.id
  const nonce = randomBytes(8).toString('hex')
  // Writes in flight, each settled into `failure`: a few are let run while the body is read, so the socket is not
  // left idle for a round trip per part; past MAX_IN_FLIGHT the body waits for Redis (back-pressure).
  const writes: Array<Promise<void>> = []
  let failure: unknown = null
  const track = (write: Promise<unknown>) => {
    writes.push(write.then(() => {}, (err: unknown) => { failure ??= err }))
  }
  /** Parts written per pointer, so that an image given twice leaves only the last one's. */
  const partsOf = new Map<string, number>()
  let reserved = false
  const park = (field: string, data: Buffer) => {
    if (!reserved) {
      reserved = true
      // Decoded bytes are at most 3/4 of the body: the reservation is exact once the body is checked.
      const estimate = Math.floor(bound * 3 / 4)
      track(store.reserveParked(id, estimate, deps.parkedMaxBytes).then(ok => { if (!ok) throw parkedFull() }))
    }
    track(store.parkPart(id, field, data))
  }
  const divert = new JsonDivert(schema, DIVERT_CHARS, pointer => {
    const earlier = partsOf.get(pointer) ?? 0
    if (earlier > 0) track(store.unparkFields(id, Array.from({ length: earlier }, (_, n) => `${pointer}#${n}`)))
    partsOf.set(pointer, 0)
    const text = new StringText()
    const image = new Base64Intake()
    /** The string's first characters: a long URL is told apart by them (checkCreate). */
    let start = ''
    const placeholder = `\\u0000kg:${nonce}:${intake.images.size}`
    const put = (parts: Buffer[]) => {
      for (const part of parts) {
        const n = partsOf.get(pointer) as number
        partsOf.set(pointer, n + 1)
        park(`${pointer}#${n}`, part)
      }
    }
    return {
      write: raw => {
        const deciding = image.deciding
        const piece = text.write(raw)
        if (start.length < 256) start += piece.slice(0, 256 - start.length)
        put(image.write(piece))
        // A piece that decoded whole had no raw control character; once one did not, look for them (JSON's error).
        if (deciding || !image.valid) text.check(raw)
      },
      end: () => {
        const last = text.end()
        if (start.length < 256) start += last.slice(0, 256 - start.length)
        put(image.write(last))
        const { verdict, parts } = image.end()
        if (!image.valid) text.checkLast()
        if (text.broken) throw notJson()
        put(parts)
        intake.images.set(JSON.parse(`"${placeholder}"`) as string, { pointer, verdict, start })
        // A lone surrogate stands in as one, so that the skeleton's check names it where it is, as for a small body.
        return text.wellFormed ? placeholder : '\\ud800'
      }
    }
  })
  let received = 0
  try {
    for await (const chunk of payload as AsyncIterable<Buffer>) {
      received += chunk.length
      if (received > bound) throw new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE()
      divert.write(chunk)
      while (writes.length > MAX_IN_FLIGHT) await writes.shift()
      if (failure !== null) throw failure
    }
    await Promise.all(writes.splice(0))
    if (failure !== null) throw failure
    const body = parseJsonBody(divert.end())
    intakes.set(request, intake)
    return body
  } catch (err) {
    await Promise.all(writes)
    await store.releaseParked(id).catch(() => {})
    throw err
  }
}

/**
 * Frees what a streamed create parked unless a stored task owns it (then it is a no-op): for every answer, so that a
 * refused, replayed or failed create leaves nothing behind.
 */
export async function releaseIntake (store: TaskStore, request: FastifyRequest): Promise<void> {
  const intake = intakes.get(request)
  if (intake === undefined) return
  intakes.delete(request)
  await store.releaseParked(intake.id).catch(() => {})
}

const ESCAPES: Record<string, string> = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' }
const CONTROL = /[\u0000-\u001f]/ // eslint-disable-line no-control-regex
const HEX4 = /^[0-9a-fA-F]{4}$/

/**
 * A JSON string's raw bytes, in pieces, as the text JSON.parse would make of them: UTF-8 decoded across piece
 * boundaries, escapes undone (one cut in two is carried over). `broken`: something JSON does not allow (a raw
 * control character, a bad escape); `wellFormed`: no lone surrogate.
 */
class StringText {
  broken = false
  wellFormed = true
  /** The last bytes of the previous and of this piece: the Base64 check learns of a bad one there a piece late. */
  #previous = Buffer.alloc(0)
  #tail = Buffer.alloc(0)
  readonly #decoder = new StringDecoder('utf8')
  #carry = ''
  #high = ''

  write (raw: Buffer): string {
    this.#previous = this.#tail
    this.#tail = Buffer.from(raw.subarray(Math.max(0, raw.length - 8)))
    return this.#text(this.#decoder.write(raw))
  }

  end (): string {
    const text = this.#text(this.#decoder.end())
    if (this.#carry !== '') this.broken = true
    if (this.#high !== '') this.wellFormed = false
    return text + this.#high
  }

  /**
   * Looks for raw control characters (not JSON) in `raw` and the end of the piece before it; bytes below 0x20 read
   * the same in latin1 and UTF-8. Only needed once the text is known not to be Base64 (Base64 has none of them).
   */
  check (raw: Buffer): void {
    if (CONTROL.test(this.#previous.toString('latin1')) || CONTROL.test(raw.toString('latin1'))) this.broken = true
  }

  /** The same for the end of the last piece, once the string is over. */
  checkLast (): void {
    if (CONTROL.test(this.#tail.toString('latin1'))) this.broken = true
  }

  #text (piece: string): string {
    let t = this.#carry + piece
    this.#carry = ''
    if (t.includes('\\')) t = this.#unescape(t)
    t = this.#high + t
    this.#high = ''
    const last = t.charCodeAt(t.length - 1)
    if (last >= 0xd800 && last <= 0xdbff) {
      this.#high = t.slice(-1)
      t = t.slice(0, -1)
    }
    if (!(t as unknown as { isWellFormed: () => boolean }).isWellFormed()) this.wellFormed = false
    return t
  }

  #unescape (t: string): string {
    let out = ''
    let from = 0
    for (let j = t.indexOf('\\'); j >= 0; j = t.indexOf('\\', from)) {
      out += t.slice(from, j)
      if (j + 1 >= t.length) {
        this.#carry = t.slice(j)
        return out
      }
      const c = t[j + 1]
      if (c === 'u') {
        if (j + 6 > t.length) {
          this.#carry = t.slice(j)
          return out
        }
        const hex = t.slice(j + 2, j + 6)
        if (!HEX4.test(hex)) this.broken = true
        else out += String.fromCharCode(parseInt(hex, 16))
        from = j + 6
      } else {
        const e = ESCAPES[c]
        if (e === undefined) this.broken = true
        else out += e
        from = j + 2
      }
    }
    return out + t.slice(from)
  }
}
