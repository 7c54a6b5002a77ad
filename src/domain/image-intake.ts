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
  /** The part being filled, PART_BYTES long; its first #partBytes are decoded. */
  #part = Buffer.allocUnsafe(PART_BYTES)
  #partBytes = 0

  /** Still reading the start, to know whether it is a `data:` URL: its characters are not checked yet. */
  get deciding (): boolean {
    return this.#start !== null
  }

  /** Whether every character checked so far is Base64's (or `=` padding at the end). */
  get valid (): boolean {
    return this.#alphabetOk && !this.#badPrefix
  }

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
    this.#finish()
    if (!this.#alphabetOk) return { verdict: { ok: false, problems: [NOT_BASE64] }, parts: [] }
    const b64 = base64Length(this.#length, this.#pad)
    if (!b64.ok) return { verdict: { ok: false, problems: [b64.problem] }, parts: [] }
    const head = Buffer.concat(this.#head)
    if (b64.bytes > MAX_IMAGE_BYTES) return { verdict: { ok: false, problems: tooLarge(b64.bytes, head) }, parts: [] }
    const verdict = inspectDecoded(head, this.#decoded, () => this.#hash.digest('hex'))
    if (!verdict.ok) return { verdict, parts: [] }
    if (this.#partBytes > 0) parts.push(this.#part.subarray(0, this.#partBytes))
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
    if (eq >= 0) {
      this.#pad = text.length - eq
      if (!PADDING.test(text.slice(eq)) || this.#pad > 2) this.#alphabetOk = false
    }
    return this.#decode(body)
  }

  /**
   * Decodes straight into the part being filled (Buffer#write: no buffer per piece, no copy to join them). Node's
   * decoder skips characters outside the alphabet, so a piece decoding to fewer bytes than its length says holds one:
   * that is the alphabet check of every piece, at no cost of its own.
   */
  #decode (body: string): Buffer[] {
    if (this.#stopped) {
      if (!ALPHABET.test(body)) this.#alphabetOk = false
      return []
    }
    const parts: Buffer[] = []
    let text = body
    if (this.#rest !== '') {
      const need = 4 - this.#rest.length
      if (text.length < need) {
        this.#rest += text
        return parts
      }
      const group = this.#rest + text.slice(0, need)
      this.#rest = ''
      text = text.slice(need)
      this.#write(group, parts)
    }
    const usable = text.length - text.length % 4
    this.#rest = text.slice(usable)
    for (let at = 0; at < usable && this.#alphabetOk;) {
      if (this.#stopped) {
        if (!ALPHABET.test(text.slice(at, usable))) this.#alphabetOk = false
        break
      }
      const chars = Math.min(usable - at, (PART_BYTES - this.#partBytes) / 3 * 4)
      this.#write(text.slice(at, at + chars), parts)
      at += chars
    }
    return parts
  }

  /** Decodes `chars` (a multiple of 4, no `=`, fitting the part) into the part; a full part goes to `parts`. */
  #write (chars: string, parts: Buffer[]): void {
    const from = this.#partBytes
    const written = this.#part.write(chars, from, 'base64')
    if (written !== chars.length / 4 * 3) {
      this.#alphabetOk = false
      return
    }
    this.#took(from, from + written)
    if (this.#partBytes === PART_BYTES) {
      if (!this.#stopped) parts.push(this.#part)
      this.#part = Buffer.allocUnsafe(PART_BYTES)
      this.#partBytes = 0
    }
  }

  /** Bytes [from, to) of the part are decoded: counted, hashed, kept for the header, checked against the limit. */
  #took (from: number, to: number): void {
    const bytes = this.#part.subarray(from, to)
    this.#partBytes = to
    this.#decoded += bytes.length
    this.#hash.update(bytes)
    if (this.#headBytes < HEAD_BYTES) {
      const kept = Buffer.from(bytes.subarray(0, HEAD_BYTES - this.#headBytes))
      this.#head.push(kept)
      this.#headBytes += kept.length
      // Once the header is in, an image it refuses is not decoded or parked further (it is only counted).
      if (this.#headBytes >= HEAD_BYTES && !inspectDecoded(Buffer.concat(this.#head), 0, () => '').ok) {
        this.#stopped = true
      }
    }
    if (this.#decoded > MAX_IMAGE_BYTES) this.#stopped = true
  }

  /** The characters left after the last whole group of 4, decoded (a valid Base64 ends in 0, 2 or 3 of them). */
  #finish (): void {
    if (this.#rest === '' || !this.#alphabetOk) return
    if (!ALPHABET.test(this.#rest)) {
      this.#alphabetOk = false
      return
    }
    if (this.#stopped) return
    const bytes = Buffer.from(this.#rest, 'base64')
    bytes.copy(this.#part, this.#partBytes)
    this.#took(this.#partBytes, this.#partBytes + bytes.length)
  }
}
