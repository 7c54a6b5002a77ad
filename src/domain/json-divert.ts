/**
 * Reads a JSON body as it arrives and diverts its long image strings (the places a create's schema marks as Base64,
 * once longer than `minChars`) to a sink of their own, keeping everything else as text: the *skeleton*, the body
 * with each diverted string replaced by a short placeholder. The skeleton is then parsed and checked exactly as a
 * small body is (src/plugins/bounds.ts parseJsonBody), so every error but those inside a diverted string is the one
 * a small body gets; the sink gives those (src/domain/image-intake.ts).
 *
 * Why not a streaming JSON library: this only has to find strings and where they sit, never to validate (the
 * skeleton's JSON.parse does), and it must cost next to nothing on hostile bodies (5,000,000 numbers): a tokenizer
 * emitting a token per value (stream-json: ~1.1 s for that body, against 0.4 s for JSON.parse) would undo issue 13's
 * bounds. Strings are skipped with Buffer.indexOf; only the bytes between them are looked at one by one.
 */
type Obj = Record<string, unknown>
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v)

const QUOTE = 0x22
const BACKSLASH = 0x5c
/** The bytes that matter outside strings where no image can be: a string's start and the brackets. */
const SKIP_TO = [QUOTE, 0x7b, 0x7d, 0x5b, 0x5d]

/** Where a diverted string's bytes go: its raw JSON text (escapes included), then its end, answered with the text
 * that stands for it in the skeleton (between the quotes, as JSON). */
export interface DivertSink {
  write: (raw: Buffer) => void
  end: () => string
}

interface Frame { array: boolean, schema: Obj | null, key: string | null, index: number, expectKey: boolean }

type State = 'outside' | 'key' | 'string' | 'candidate' | 'diverted'

export class JsonDivert {
  readonly #pieces: Buffer[] = []
  #length = 0
  readonly #stack: Frame[] = []
  #state: State = 'outside'
  /** After a backslash inside a string: the next byte is escaped. */
  #escaped = false
  #keyRaw: Buffer[] = []
  /** Where the candidate string's content starts in the skeleton. */
  #stringStart = 0
  #sink: DivertSink | null = null

  /**
   * `schema`: the body's JSON schema (its `properties`, `items` and `contentEncoding: 'base64'` say where images
   * are); `open(pointer)`: a sink for the image string at `pointer`, taking over once it passes `minChars` bytes.
   */
  constructor (readonly schema: Obj, readonly minChars: number, readonly open: (pointer: string) => DivertSink) {}

  /** The next bytes of the body. */
  write (chunk: Buffer): void {
    let i = 0
    let copied = 0
    const n = chunk.length
    const keep = (end: number) => {
      if (end > copied) this.#push(chunk.subarray(copied, end))
      copied = end
    }
    // Inside a value the schema knows nothing of (metadata, an unknown field), no image can be: only strings and
    // brackets matter there, found with indexOf (cached per byte) instead of a look at every byte.
    const next = [-2, -2, -2, -2, -2]
    const skip = (from: number): number => {
      let min = n
      for (let k = 0; k < SKIP_TO.length; k++) {
        if (next[k] !== -1 && next[k] < from) next[k] = chunk.indexOf(SKIP_TO[k], from)
        if (next[k] >= 0 && next[k] < min) min = next[k]
      }
      return min
    }
    while (i < n) {
      if (this.#state === 'outside') {
        if (this.#stack.length > 0 && this.#stack[this.#stack.length - 1].schema === null) {
          i = skip(i)
          if (i >= n) break
        }
        const b = chunk[i]
        if (b === QUOTE) {
          // Where its content starts in the skeleton, once the bytes before it are in (nothing is copied yet).
          if (this.#openString()) this.#stringStart = this.#length + (i + 1 - copied)
        } else if (b === 0x7b || b === 0x5b) this.#openContainer(b === 0x5b)
        else if (b === 0x7d || b === 0x5d) this.#stack.pop()
        else if (b === 0x2c) this.#comma()
        else if (b === 0x3a) this.#colon()
        i++
        continue
      }
      // Inside a string: jump to its closing quote, minding backslashes.
      const end = this.#stringEnd(chunk, i)
      const stop = end < 0 ? n : end
      if (this.#state === 'key') {
        this.#keyRaw.push(chunk.subarray(i, stop))
      } else if (this.#state === 'candidate' && this.#length + (stop - copied) - this.#stringStart > this.minChars) {
        keep(stop)
        this.#divert()
      } else if (this.#state === 'diverted') {
        if (stop > i) (this.#sink as DivertSink).write(chunk.subarray(i, stop))
        copied = stop
      }
      if (end < 0) break
      this.#closeString()
      i = end + 1
    }
    keep(n)
  }

  /** The skeleton: the body as text, each diverted string replaced by its sink's placeholder. */
  end (): string {
    return Buffer.concat(this.#pieces, this.#length).toString('utf8')
  }

  #push (bytes: Buffer): void {
    this.#pieces.push(bytes)
    this.#length += bytes.length
  }

  #top (): Frame | undefined {
    return this.#stack[this.#stack.length - 1]
  }

  /** The schema of the value about to start inside the top frame; null when it has none (or no name). */
  #child (): Obj | null {
    const top = this.#top()
    if (top === undefined) return this.schema
    if (top.schema === null) return null
    if (top.array) return isObj(top.schema.items) ? top.schema.items : null
    const props = top.schema.properties
    if (top.key === null || !isObj(props) || !Object.hasOwn(props, top.key)) return null
    const field = props[top.key]
    return isObj(field) ? field : null
  }

  #openContainer (array: boolean): void {
    this.#stack.push({ array, schema: this.#child(), key: null, index: 0, expectKey: !array })
  }

  #comma (): void {
    const top = this.#top()
    if (top === undefined) return
    if (top.array) top.index++
    else {
      top.expectKey = true
      top.key = null
    }
  }

  #colon (): void {
    const top = this.#top()
    if (top !== undefined && !top.array) top.expectKey = false
  }

  /** Enters a string; true when it is an image the schema marks, which may be diverted. */
  #openString (): boolean {
    const top = this.#top()
    this.#escaped = false
    if (top?.schema === null) {
      this.#state = 'string'
      return false
    }
    if (top !== undefined && !top.array && top.expectKey) {
      this.#state = 'key'
      this.#keyRaw = []
      return false
    }
    // The pointer is built only if the string is diverted: most image strings are short (URLs).
    const image = this.#child()?.contentEncoding === 'base64'
    this.#state = image ? 'candidate' : 'string'
    return image
  }

  /** The JSON pointer of the value inside the top frame (RFC 6901), or null when a name on the way is unknown. */
  #pointerOf (): string | null {
    const parts: string[] = []
    for (const f of this.#stack) {
      if (f.array) parts.push(String(f.index))
      else if (f.key === null) return null
      else parts.push(f.key.replace(/~/g, '~0').replace(/\//g, '~1'))
    }
    return '/' + parts.join('/')
  }

  /** The index of the closing quote from `i`, or -1 when the string goes on past this chunk. */
  #stringEnd (chunk: Buffer, i: number): number {
    let at = i
    if (this.#escaped) {
      // The previous chunk ended in an escaping backslash: this first byte is taken by it.
      this.#escaped = false
      at++
    }
    for (;;) {
      const q = chunk.indexOf(QUOTE, at)
      const end = q < 0 ? chunk.length : q
      // Only the run of backslashes right before the quote (or the chunk's end) matters: odd, and it escapes.
      let bs = 0
      for (let k = end - 1; k >= at && chunk[k] === BACKSLASH; k--) bs++
      if (q < 0) {
        this.#escaped = bs % 2 === 1
        return -1
      }
      if (bs % 2 === 0) return q
      at = q + 1
    }
  }

  #closeString (): void {
    const state = this.#state
    this.#state = 'outside'
    if (state === 'key') {
      const top = this.#top() as Frame
      const raw = Buffer.concat(this.#keyRaw).toString('utf8')
      this.#keyRaw = []
      try { top.key = JSON.parse(`"${raw}"`) as string } catch { top.key = null }
    } else if (state === 'diverted') {
      const placeholder = (this.#sink as DivertSink).end()
      this.#sink = null
      this.#push(Buffer.from(placeholder))
    }
  }

  /** The candidate string is long: what of it is in the skeleton goes to a sink, and the rest will follow. */
  #divert (): void {
    const all = Buffer.concat(this.#pieces, this.#length)
    const start = this.#stringStart
    this.#pieces.length = 0
    this.#pieces.push(all.subarray(0, start))
    this.#length = start
    this.#sink = this.open(this.#pointerOf() ?? '')
    if (all.length > start) this.#sink.write(all.subarray(start))
    this.#state = 'diverted'
  }
}
