import { createHash } from 'node:crypto'
import { imageSize } from 'image-size'

/**
 * Checks for images sent inline as Base64 in a create request, following Kling's
 * multi-image2video rules: JPG/JPEG or PNG, at most 10 MB, each side at least 300 px,
 * width/height between 1:2.5 and 2.5:1.
 *
 * Pure: the only work besides string handling is decoding and SHA-256 hashing.
 * Problems are phrases without a subject ("must be ..."), so a caller can prefix
 * them with the field name. They never contain the Base64 content.
 */

export const MAX_IMAGE_BYTES = 10 * 1024 * 1024
export const MIN_SIDE = 300
export const MIN_ASPECT = 1 / 2.5
export const MAX_ASPECT = 2.5
/** Relative tolerance used when comparing a mask's aspect ratio with its image. */
export const MASK_ASPECT_TOLERANCE = 0.01

export type ImageFormat = 'png' | 'jpeg'
/** What a task shows instead of the Base64 itself. */
export interface ImageDescriptor { sha256: string, bytes: number, width: number, height: number, format: ImageFormat }
/**
 * `data` holds the decoded bytes; `problems` lists every problem found, as phrases like
 * 'must be at least 300 px wide (got 200)'.
 */
export type InspectResult =
  | { ok: true, descriptor: ImageDescriptor, data: Buffer }
  | { ok: false, problems: string[] }

const PNG_MAGIC = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]
const JPEG_MAGIC = [0xff, 0xd8, 0xff]

/** Standard (`+/`) or url-safe (`-_`) alphabet, then at most two `=`. Classes are disjoint, so this is linear. */
const BASE64_RE = /^[A-Za-z0-9+/_-]*={0,2}$/
const URL_RE = /^https?:\/\//i
/** A data: URL header is short; don't scan a 14 MB string looking for its comma. */
export const MAX_DATA_HEADER = 256
/** The problems of a string that is not Base64 at all, by its characters and by its `data:` header. */
export const NOT_BASE64 = 'must be valid Base64 (A-Z, a-z, 0-9, + and / or - and _, optional = padding, no whitespace)'
export const BAD_DATA_PREFIX = 'must be plain Base64 or a data: URL ending in ;base64,'

/** True when the value is meant as a URL (starts with http:// or https://, case-insensitive). */
export function isUrl (value: string): boolean {
  return URL_RE.test(value)
}

/** Index just after the `,` of a leading `data:<mime>[;params];base64,` header, or -1. */
export function dataPrefixEnd (value: string): number {
  if (value.length < 5 || value.slice(0, 5).toLowerCase() !== 'data:') return -1
  const comma = value.slice(0, MAX_DATA_HEADER).indexOf(',')
  if (comma < 0) return -1
  const header = value.slice(0, comma).toLowerCase()
  return header.endsWith(';base64') ? comma + 1 : -1
}

/** Removes a leading `data:<mime>;base64,` prefix if present. */
export function stripDataPrefix (value: string): string {
  const end = dataPrefixEnd(value)
  return end < 0 ? value : value.slice(end)
}

/** Which of the accepted formats the bytes start with, if any. */
export function detectFormat (bytes: Uint8Array): ImageFormat | undefined {
  if (startsWith(bytes, PNG_MAGIC)) return 'png'
  if (startsWith(bytes, JPEG_MAGIC)) return 'jpeg'
  return undefined
}

function startsWith (bytes: Uint8Array, magic: number[]): boolean {
  if (bytes.length < magic.length) return false
  for (let i = 0; i < magic.length; i++) {
    if (bytes[i] !== magic[i]) return false
  }
  return true
}

type Base64Check =
  | { ok: true, bytes: number }
  | { ok: false, problem: string }

/**
 * Validates the Base64 text and computes the decoded size from its length alone.
 * Expects the data: prefix to be gone already.
 */
export function checkBase64 (s: string): Base64Check {
  if (s.length === 0) return { ok: false, problem: 'must not be empty' }
  if (!BASE64_RE.test(s)) {
    return { ok: false, problem: NOT_BASE64 }
  }
  let pad = 0
  while (pad < 2 && s.charCodeAt(s.length - 1 - pad) === 0x3d) pad++
  return base64Length(s.length, pad)
}

/** The decoded size of Base64 text of `length` characters, `pad` of them trailing `=`, or why none is possible. */
export function base64Length (length: number, pad: number): Base64Check {
  const n = length - pad
  if (n === 0 || n % 4 === 1 || (pad > 0 && length % 4 !== 0)) {
    return { ok: false, problem: 'must be valid Base64 (its length is not possible for Base64)' }
  }
  return { ok: true, bytes: Math.floor(n * 3 / 4) }
}

function formatMb (bytes: number): string {
  return (bytes / (1024 * 1024)).toFixed(2)
}

/** Every problem with the dimensions alone (size and aspect ratio). */
export function dimensionProblems (width: number, height: number): string[] {
  const problems: string[] = []
  if (width < MIN_SIDE) problems.push(`must be at least ${MIN_SIDE} px wide (got ${width})`)
  if (height < MIN_SIDE) problems.push(`must be at least ${MIN_SIDE} px tall (got ${height})`)
  // width/height within [2/5, 5/2], compared in integers so the bounds are exact:
  // w/h >= 2/5  <=>  5w >= 2h,   w/h <= 5/2  <=>  2w <= 5h
  if (width > 0 && height > 0 && (5 * width < 2 * height || 2 * width > 5 * height)) {
    problems.push(
      'must have an aspect ratio (width/height) between 1:2.5 and 2.5:1 ' +
      `(got ${width}x${height}, ${(width / height).toFixed(3)})`
    )
  }
  return problems
}

/** The problems of an image over MAX_IMAGE_BYTES, `head` being its first bytes (24 are enough). */
export function tooLarge (bytes: number, head: Uint8Array): string[] {
  const problems = [
    `must be at most 10 MB (${MAX_IMAGE_BYTES} bytes) once decoded (got ${bytes} bytes, ${formatMb(bytes)} MB)`
  ]
  if (detectFormat(head) === undefined) problems.push('must be a JPG or PNG image')
  return problems
}

/**
 * Decodes and checks one Base64 image (prefix already stripped or not — strip it inside too). Lists every problem it
 * can find (e.g. both too small AND bad aspect), never throws.
 */
export function inspectBase64Image (value: string): InspectResult {
  try {
    return inspect(value)
  } catch {
    // Nothing below is expected to throw; this keeps the "never throws" promise regardless.
    return { ok: false, problems: ['could not be read as an image'] }
  }
}

function inspect (value: string): InspectResult {
  if (typeof value !== 'string') return { ok: false, problems: ['must be a Base64 string'] }
  if (value.length >= 5 && value.slice(0, 5).toLowerCase() === 'data:' && dataPrefixEnd(value) < 0) {
    return { ok: false, problems: [BAD_DATA_PREFIX] }
  }
  const s = stripDataPrefix(value)
  const b64 = checkBase64(s)
  if (!b64.ok) return { ok: false, problems: [b64.problem] }

  if (b64.bytes > MAX_IMAGE_BYTES) {
    // Don't decode megabytes just to refuse them; the first 24 bytes are enough for the format.
    return { ok: false, problems: tooLarge(b64.bytes, Buffer.from(s.slice(0, 32), 'base64')) }
  }

  const data = Buffer.from(s, 'base64')
  if (data.length !== b64.bytes) return { ok: false, problems: ['must be valid Base64'] }
  const checked = inspectDecoded(data, data.length, () => createHash('sha256').update(data).digest('hex'))
  return checked.ok ? { ...checked, data } : checked
}

/**
 * The checks after decoding, on the image's first bytes (`head`: all of it, or at least HEAD_BYTES of a longer
 * one) and its size: the format, the dimensions image-size reads, Kling's limits on them. `sha256` is asked for only
 * when every check passed. Shared by the whole-string path above and the streamed intake (image-intake.ts).
 */
export function inspectDecoded (head: Buffer, bytes: number, sha256: () => string):
{ ok: true, descriptor: ImageDescriptor } | { ok: false, problems: string[] } {
  const format = detectFormat(head)
  if (format === undefined) return { ok: false, problems: ['must be a JPG or PNG image'] }

  let width: number
  let height: number
  try {
    const size = imageSize(headerCopy(head, format))
    const expected = format === 'png' ? 'png' : 'jpg'
    if (size.type !== undefined && size.type !== expected) throw new TypeError(`read as ${size.type}`)
    width = size.width
    height = size.height
    if (!Number.isSafeInteger(width) || !Number.isSafeInteger(height)) throw new TypeError('no dimensions')
  } catch {
    return {
      ok: false,
      problems: [
        `could not read the ${format === 'png' ? 'PNG' : 'JPG'} image dimensions (the file looks corrupt or truncated)`
      ]
    }
  }

  const problems = dimensionProblems(width, height)
  if (problems.length > 0) return { ok: false, problems }
  return { ok: true, descriptor: { sha256: sha256(), bytes, width, height, format } }
}

/**
 * How much of an image's start the streamed intake keeps for inspectDecoded: more than any PNG header and than
 * JPEG_TOLERANT_SCAN_BYTES, so a JPEG reads the same from it as from the whole file unless its frame header lies
 * past it (metadata segments of more than 256 KB before it).
 */
export const HEAD_BYTES = 256 * 1024

/** Bytes of a PNG image-size reads: signature and IHDR (40 for Apple's CgBI variant). */
const PNG_HEADER_BYTES = 64

/**
 * A fresh copy of the bytes image-size needs. A copy, not a view: image-size reads numbers through
 * `new DataView(input.buffer, input.byteOffset + offset)` without a length, so on a view of a larger
 * ArrayBuffer (small Buffers share Node's pool) a truncated header would read, and report as its
 * dimensions, bytes that belong to something else. On an exact copy such reads throw RangeError.
 */
function headerCopy (data: Buffer, format: ImageFormat): Uint8Array {
  return new Uint8Array(format === 'jpeg' ? jpegHeaderBytes(data) : data.subarray(0, PNG_HEADER_BYTES))
}

/**
 * How much of a JPEG that does not walk cleanly image-size may scan: it steps over junk at ~200 ns a byte, so this
 * caps that at ~25 ms.
 */
export const JPEG_TOLERANT_SCAN_BYTES = 128 * 1024

/**
 * The part of a JPEG image-size needs to find the frame header. image-size steps over bytes it
 * doesn't understand one at a time, which takes over a second for 10 MB of junk behind a JPEG
 * signature, so walk the segment chain here (O(number of segments)) and hand over only the bytes
 * up to the end of the SOFn segment. If the chain doesn't walk cleanly, let image-size make its
 * own attempt (on a mismatch it re-reads a segment length one byte further on) on a bounded prefix.
 */
export function jpegHeaderBytes (data: Buffer): Buffer {
  const end = jpegFrameHeaderEnd(data)
  return data.subarray(0, end ?? JPEG_TOLERANT_SCAN_BYTES)
}

/** Offset just past the first SOFn segment, following segment lengths from SOI; undefined if the chain breaks first. */
function jpegFrameHeaderEnd (data: Buffer): number | undefined {
  let i = 2 // after SOI
  while (i + 1 < data.length) {
    if (data[i] !== 0xff) return undefined
    let marker = data[i + 1]
    while (marker === 0xff && i + 2 < data.length) marker = data[++i + 1] // fill bytes before a marker
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) { // standalone markers (TEM, RSTn)
      i += 2
      continue
    }
    // A frame header must come before another SOI, EOI or the scan (SOS).
    if (marker === 0xff || marker === 0x00 || marker === 0xd8 || marker === 0xd9 || marker === 0xda) return undefined
    if (i + 3 >= data.length) return undefined
    const length = data.readUInt16BE(i + 2)
    if (length < 2) return undefined
    const next = i + 2 + length
    if (next > data.length) return undefined
    if (isStartOfFrame(marker)) return next
    i = next
  }
  return undefined
}

/** SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC) which share the range. */
function isStartOfFrame (marker: number): boolean {
  return marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc
}

/** For a mask vs its image: same aspect ratio (within 1%) and same resolution. Returns problems (empty when fine). */
export function compareMask (mask: ImageDescriptor, image: ImageDescriptor, imageName = 'the first image'): string[] {
  const problems: string[] = []
  const maskRatio = mask.width / mask.height
  const imageRatio = image.width / image.height
  if (!(Math.abs(maskRatio - imageRatio) <= imageRatio * MASK_ASPECT_TOLERANCE)) {
    const sizes = `mask ${mask.width}x${mask.height}, ${maskRatio.toFixed(3)}; ` +
      `image ${image.width}x${image.height}, ${imageRatio.toFixed(3)}`
    problems.push(`must have the same aspect ratio as ${imageName} within 1% (${sizes})`)
  }
  if (mask.width !== image.width || mask.height !== image.height) {
    const sizes = `mask ${mask.width}x${mask.height}, image ${image.width}x${image.height}`
    problems.push(`must have the same resolution as ${imageName} (${sizes})`)
  }
  return problems
}
