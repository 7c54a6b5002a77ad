/**
 * One Base64 image read as it arrives (a large create body, src/services/intake.ts): the text comes in pieces, is
 * checked as it comes (alphabet, padding, the 10 MB limit by the bytes decoded so far) and decoded into parts of
 * PART_BYTES, which the caller parks at once, so neither the Base64 nor the whole image is ever held. The verdict
 * at the end is the one inspectBase64Image gives the same string whole (same problems, same order, same
 * descriptor): both end in images.ts's checks. Pure: no I/O; the caller stores the parts it is handed.
 */
import { createHash, type Hash } from 'node:crypto'
import {
  BAD_DATA_PREFIX, HEAD_BYTES, MAX_DATA_HEADER, MAX_IMAGE_BYTES, NOT_BASE64, base64Length, dataPrefixEnd,
  inspectDecoded, tooLarge, type ImageDescriptor
} from './images.ts'

/** A multiple of 3, so that the Base64 of the parts, one after the other, is the Base64 of the image. */
export const PART_BYTES = 3 * 256 * 1024

export type IntakeVerdict = { ok: true, descriptor: ImageDescriptor } | { ok: false, problems: string[] }

const ALPHABET = /^[A-Za-z0-9+/_-]*$/
const PADDING = /^=*$/

export class Base64Intake {
  /** The text until the `data:` header is decided (MAX_DATA_HEADER characters, or the end). */
  #start: string | null = ''
  #badPrefix = false
  /** Characters of the Base64 (header stripped), `=` included, and of those the trailing `=`. */
  #length = 0
  #pad = 0
  #alphabetOk = true
  /** Characters not decoded yet (fewer than 4). */
  #rest = ''
  #decoded = 0
  /** Decoding stops once the verdict cannot be a success (too large, or a bad header): what is left is only counted. */
  #stopped = false
  readonly #head: Buffer[] = []
  #headBytes = 0
  readonly #hash: Hash = createHash('sha256')
  #part: Buffer[] = []
  #partBytes = 0

  /** Takes the next piece of the string's text; returns the parts now complete, to be parked in order. */
  write (text: string): Buffer[] {
    if (this.#start !== null) {
      this.#start += text
      if (this.#start.length < MAX_DATA_HEADER) return []
      return this.#decide()
    }
    return this.#feed(text)
  }

  /** The string ended: the verdict, and the last parts (none unless the verdict is a success). */
  end (): { verdict: IntakeVerdict, parts: Buffer[] } {
    const parts = this.#start === null ? [] : this.#decide()
    if (this.#badPrefix) return { verdict: { ok: false, problems: [BAD_DATA_PREFIX] }, parts: [] }
    if (this.#length === 0) return { verdict: { ok: false, problems: ['must not be empty'] }, parts: [] }
    if (!this.#alphabetOk) return { verdict: { ok: false, problems: [NOT_BASE64] }, parts: [] }
    const b64 = base64Length(this.#length, this.#pad)
    if (!b64.ok) return { verdict: { ok: false, problems: [b64.problem] }, parts: [] }
    const head = Buffer.concat(this.#head)
    if (b64.bytes > MAX_IMAGE_BYTES) return { verdict: { ok: false, problems: tooLarge(b64.bytes, head) }, parts: [] }
    if (this.#rest.length > 0) parts.push(...this.#take(Buffer.from(this.#rest, 'base64')))
    const verdict = inspectDecoded(head, this.#decoded, () => this.#hash.digest('hex'))
    if (!verdict.ok) return { verdict, parts: [] }
    if (this.#partBytes > 0) parts.push(Buffer.concat(this.#part))
    this.#part = []
    this.#partBytes = 0
    return { verdict, parts }
  }

  /** Strips a `data:…;base64,` header (or finds it malformed) once enough of the start is in. */
  #decide (): Buffer[] {
    const start = this.#start as string
    this.#start = null
    if (start.length >= 5 && start.slice(0, 5).toLowerCase() === 'data:') {
      const end = dataPrefixEnd(start)
      if (end < 0) {
        this.#badPrefix = true
        this.#stopped = true
        return []
      }
      return this.#feed(start.slice(end))
    }
    return this.#feed(start)
  }

  #feed (text: string): Buffer[] {
    if (this.#badPrefix || text.length === 0) return []
    this.#length += text.length
    if (!this.#alphabetOk) return []
    if (this.#pad > 0) {
      // Past the first `=`, only `=` may follow, at most two in all.
      this.#pad += text.length
      if (!PADDING.test(text) || this.#pad > 2) this.#alphabetOk = false
      return []
    }
    const eq = text.indexOf('=')
    const body = eq < 0 ? text : text.slice(0, eq)
    if (!ALPHABET.test(body)) {
      this.#alphabetOk = false
      return []
    }
    if (eq >= 0) {
      this.#pad = text.length - eq
      if (!PADDING.test(text.slice(eq)) || this.#pad > 2) this.#alphabetOk = false
    }
    return this.#decode(body)
  }

  #decode (body: string): Buffer[] {
    if (this.#stopped) return []
    const text = this.#rest + body
    const usable = text.length - text.length % 4
    this.#rest = text.slice(usable)
    return usable === 0 ? [] : this.#take(Buffer.from(text.slice(0, usable), 'base64'))
  }

  #take (bytes: Buffer): Buffer[] {
    this.#decoded += bytes.length
    if (this.#headBytes < HEAD_BYTES) {
      const kept = bytes.subarray(0, HEAD_BYTES - this.#headBytes)
      this.#head.push(Buffer.from(kept))
      this.#headBytes += kept.length
      // Once the header is in, an image it refuses is not decoded or parked further (it is only counted).
      if (this.#headBytes >= HEAD_BYTES && !inspectDecoded(Buffer.concat(this.#head), 0, () => '').ok) {
        this.#stopped = true
      }
    }
    if (this.#decoded > MAX_IMAGE_BYTES) this.#stopped = true
    if (this.#stopped) {
      this.#part = []
      this.#partBytes = 0
      return []
    }
    this.#hash.update(bytes)
    this.#part.push(bytes)
    this.#partBytes += bytes.length
    if (this.#partBytes < PART_BYTES) return []
    const all = Buffer.concat(this.#part)
    const parts: Buffer[] = []
    let at = 0
    for (; at + PART_BYTES <= all.length; at += PART_BYTES) parts.push(all.subarray(at, at + PART_BYTES))
    this.#part = at < all.length ? [all.subarray(at)] : []
    this.#partBytes = all.length - at
    return parts
  }
}
