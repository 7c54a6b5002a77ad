import { createHash, randomBytes } from 'node:crypto'
import { describe, it, expect, vi, afterEach } from 'vitest'
import fc from 'fast-check'
import { imageSize } from 'image-size'
import {
  JPEG_TOLERANT_SCAN_BYTES,
  MAX_IMAGE_BYTES,
  MIN_ASPECT,
  MAX_ASPECT,
  MIN_SIDE,
  compareMask,
  inspectBase64Image,
  isUrl,
  jpegHeaderBytes,
  stripDataPrefix,
  type ImageDescriptor,
  type InspectResult
} from '../src/domain/images.ts'
import { makeJpeg, makePng } from './helpers/images.ts'

const b64 = (buf: Buffer) => buf.toString('base64')
const sha256 = (buf: Buffer) => createHash('sha256').update(buf).digest('hex')

function problemsOf (r: InspectResult): string[] {
  if (r.ok) throw new Error(`expected problems, got ok ${JSON.stringify(r.descriptor)}`)
  return r.problems
}

function descriptorOf (r: InspectResult): ImageDescriptor {
  if (!r.ok) throw new Error(`expected ok, got ${r.problems.join('; ')}`)
  return r.descriptor
}

afterEach(() => { vi.restoreAllMocks() })

describe('test image builders', () => {
  it('makePng and makeJpeg produce images image-size reads with the right dimensions', () => {
    expect(imageSize(makePng(300, 301))).toMatchObject({ width: 300, height: 301, type: 'png' })
    expect(imageSize(makeJpeg(640, 480))).toMatchObject({ width: 640, height: 480, type: 'jpg' })
  })
})

describe('constants', () => {
  it('match the Kling limits', () => {
    expect(MAX_IMAGE_BYTES).toBe(10 * 1024 * 1024)
    expect(MIN_SIDE).toBe(300)
    expect(MIN_ASPECT).toBeCloseTo(0.4)
    expect(MAX_ASPECT).toBe(2.5)
  })
})

describe('isUrl', () => {
  it('recognises http and https URLs, case-insensitively', () => {
    expect(isUrl('https://example.com/a.png')).toBe(true)
    expect(isUrl('http://example.com/a.png')).toBe(true)
    expect(isUrl('HTTPS://EXAMPLE.COM/a.png')).toBe(true)
    expect(isUrl('ftp://example.com/a.png')).toBe(false)
    expect(isUrl('iVBORw0KGgo=')).toBe(false)
    expect(isUrl('data:image/png;base64,iVBORw0KGgo=')).toBe(false)
    expect(isUrl(' https://example.com')).toBe(false)
  })
})

describe('stripDataPrefix', () => {
  it('removes a data:<mime>;base64, prefix and leaves anything else alone', () => {
    expect(stripDataPrefix('data:image/png;base64,AAAA')).toBe('AAAA')
    expect(stripDataPrefix('DATA:image/jpeg;BASE64,AAAA')).toBe('AAAA')
    expect(stripDataPrefix('data:image/png;name=a.png;base64,AAAA')).toBe('AAAA')
    expect(stripDataPrefix('AAAA')).toBe('AAAA')
    expect(stripDataPrefix('data:image/png,AAAA')).toBe('data:image/png,AAAA')
    expect(stripDataPrefix('')).toBe('')
  })
})

describe('inspectBase64Image', () => {
  it('accepts a PNG and describes it', () => {
    const png = makePng(300, 400)
    const r = inspectBase64Image(b64(png))
    expect(descriptorOf(r)).toEqual({ sha256: sha256(png), bytes: png.length, width: 300, height: 400, format: 'png' })
    expect(r.ok && r.data.equals(png)).toBe(true)
  })

  it('accepts a JPEG and describes it', () => {
    const jpg = makeJpeg(1280, 720)
    const r = inspectBase64Image(b64(jpg))
    expect(descriptorOf(r))
      .toEqual({ sha256: sha256(jpg), bytes: jpg.length, width: 1280, height: 720, format: 'jpeg' })
    expect(r.ok && r.data.equals(jpg)).toBe(true)
  })

  it('strips a data: prefix instead of refusing it', () => {
    const png = makePng(320, 320)
    for (const prefix of ['data:image/png;base64,', 'data:image/jpeg;base64,', 'DATA:IMAGE/PNG;BASE64,']) {
      expect(descriptorOf(inspectBase64Image(prefix + b64(png))).sha256).toBe(sha256(png))
    }
  })

  it('refuses a data: URL that is not base64', () => {
    expect(problemsOf(inspectBase64Image('data:image/png,abcd')))
      .toEqual(['must be plain Base64 or a data: URL ending in ;base64,'])
  })

  it('accepts the url-safe Base64 alphabet and unpadded Base64', () => {
    const png = makePng(300, 300, 0xfb) // bytes that produce '-' / '_' characters are likely somewhere
    const urlSafe = png.toString('base64url')
    expect(urlSafe).toMatch(/[-_]/)
    expect(descriptorOf(inspectBase64Image(urlSafe)).sha256).toBe(sha256(png))
    const unpadded = b64(png).replace(/=+$/, '')
    expect(descriptorOf(inspectBase64Image(unpadded)).sha256).toBe(sha256(png))
  })

  it('refuses GIF magic bytes as not JPG or PNG', () => {
    const gif = Buffer.concat([
      Buffer.from('GIF89a', 'latin1'), Buffer.from([0x2c, 0x01, 0x2c, 0x01, 0x80, 0, 0]), Buffer.alloc(64)
    ])
    expect(imageSize(gif)).toMatchObject({ width: 300, height: 300, type: 'gif' }) // image-size itself would accept it
    expect(problemsOf(inspectBase64Image(b64(gif)))).toEqual(['must be a JPG or PNG image'])
  })

  it('refuses random bytes as not JPG or PNG', () => {
    const bytes = randomBytes(2048)
    bytes[0] = 0x00
    expect(problemsOf(inspectBase64Image(b64(bytes)))).toEqual(['must be a JPG or PNG image'])
  })

  it('reports unreadable dimensions for a file with the right magic bytes but a broken header', () => {
    const brokenJpeg = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), randomBytes(100).fill(0x00)])
    expect(problemsOf(inspectBase64Image(b64(brokenJpeg))))
      .toEqual([expect.stringContaining('could not read the JPG image dimensions')])
    const truncatedPng = makePng(300, 300).subarray(0, 10)
    expect(problemsOf(inspectBase64Image(b64(truncatedPng))))
      .toEqual([expect.stringContaining('could not read the PNG image dimensions')])
  })

  it('does not take dimensions from memory beyond a truncated header', () => {
    // image-size reads through DataViews on the whole underlying ArrayBuffer; small decoded
    // Buffers sit in Node's shared pool, so a truncated IHDR would otherwise read a neighbour's bytes.
    const truncatedIhdr = makePng(300, 300).subarray(0, 18)
    expect(problemsOf(inspectBase64Image(b64(truncatedIhdr))))
      .toEqual([expect.stringContaining('could not read the PNG image dimensions')])
  })

  it('refuses a side of 299 px', () => {
    expect(problemsOf(inspectBase64Image(b64(makePng(299, 400))))).toEqual(['must be at least 300 px wide (got 299)'])
    expect(problemsOf(inspectBase64Image(b64(makeJpeg(400, 299))))).toEqual(['must be at least 300 px tall (got 299)'])
  })

  it('refuses an aspect ratio of 3:1 but accepts exactly 2.5:1 and 1:2.5', () => {
    const wide = problemsOf(inspectBase64Image(b64(makePng(900, 300))))
    expect(wide).toHaveLength(1)
    expect(wide[0]).toMatch(/aspect ratio/)
    expect(problemsOf(inspectBase64Image(b64(makePng(300, 900))))[0]).toMatch(/aspect ratio/)
    expect(descriptorOf(inspectBase64Image(b64(makePng(750, 300))))).toMatchObject({ width: 750, height: 300 })
    expect(descriptorOf(inspectBase64Image(b64(makeJpeg(300, 750))))).toMatchObject({ width: 300, height: 750 })
    expect(problemsOf(inspectBase64Image(b64(makePng(751, 300))))[0]).toMatch(/aspect ratio/)
  })

  it('reports several problems at once', () => {
    const problems = problemsOf(inspectBase64Image(b64(makePng(200, 800))))
    expect(problems).toHaveLength(2)
    expect(problems[0]).toBe('must be at least 300 px wide (got 200)')
    expect(problems[1]).toMatch(/aspect ratio.*200x800/)
    expect(problemsOf(inspectBase64Image(b64(makeJpeg(100, 100))))).toEqual([
      'must be at least 300 px wide (got 100)',
      'must be at least 300 px tall (got 100)'
    ])
  })

  it('refuses more than 10 MB decoded without decoding it', () => {
    // A valid image chunk repeated until the text decodes to more than 10 MB.
    let chunk = makePng(300, 300)
    chunk = Buffer.concat([chunk, Buffer.alloc((3 - (chunk.length % 3)) % 3)]) // length % 3 === 0: no '=' inside
    const text = b64(chunk)
    const big = text.repeat(Math.ceil((MAX_IMAGE_BYTES + 1) / chunk.length))
    expect(big.length * 3 / 4).toBeGreaterThan(MAX_IMAGE_BYTES)

    const from = vi.spyOn(Buffer, 'from')
    const problems = problemsOf(inspectBase64Image(big))
    const longDecodes = from.mock.calls.filter(args => typeof args[0] === 'string' && args[0].length > 1024)
    expect(longDecodes).toEqual([])
    expect(problems).toHaveLength(1)
    expect(problems[0]).toContain('10 MB')
  })

  it('accepts an image just under the limit', () => {
    const png = makePng(300, 300)
    const padded = Buffer.concat([png, Buffer.alloc(MAX_IMAGE_BYTES - png.length)]) // trailing bytes after IEND
    expect(descriptorOf(inspectBase64Image(b64(padded)))).toMatchObject({ bytes: MAX_IMAGE_BYTES, format: 'png' })
  })

  it('reports the format too when an oversize payload is not JPG or PNG', () => {
    const big = 'R0lGODlh' + 'A'.repeat(Math.ceil(MAX_IMAGE_BYTES * 4 / 3) + 8) // "GIF8..." then zeros
    const problems = problemsOf(inspectBase64Image(big))
    expect(problems).toHaveLength(2)
    expect(problems[0]).toContain('10 MB')
    expect(problems[1]).toBe('must be a JPG or PNG image')
  })

  it('refuses invalid Base64 without echoing it', () => {
    const secret = 'U0VDUkVUU0VDUkVU'
    const bads = [`${secret}$$`, `${secret.slice(0, 8)} ${secret.slice(8)}`, `${secret}\n`, 'äöü', '   ', '\t\n']
    for (const bad of bads) {
      const problems = problemsOf(inspectBase64Image(bad))
      expect(problems).toHaveLength(1)
      expect(problems[0]).toMatch(/must be valid Base64/)
      expect(problems.join('\n')).not.toContain(secret.slice(0, 8))
    }
  })

  it('refuses lengths and padding that cannot be Base64', () => {
    for (const bad of ['A', 'AAAAA', 'AA=', 'A===', '====', '=', 'AAA=A', 'AB=C']) {
      expect(problemsOf(inspectBase64Image(bad))[0], bad).toMatch(/must be valid Base64/)
    }
  })

  it('refuses an empty string', () => {
    expect(problemsOf(inspectBase64Image(''))).toEqual(['must not be empty'])
    expect(problemsOf(inspectBase64Image('data:image/png;base64,'))).toEqual(['must not be empty'])
  })

  it('never throws, whatever the string', () => {
    const pngSig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
    const jpgSig = Buffer.from([0xff, 0xd8, 0xff])
    const arbitrary = fc.oneof(
      fc.string(),
      fc.string({ unit: 'binary' }),
      fc.base64String(),
      fc.base64String().map(s => `data:image/png;base64,${s}`),
      fc.uint8Array({ maxLength: 512 }).map(bytes => b64(Buffer.concat([pngSig, bytes]))),
      fc.uint8Array({ maxLength: 512 }).map(bytes => b64(Buffer.concat([jpgSig, bytes])))
    )
    fc.assert(fc.property(arbitrary, s => {
      const r = inspectBase64Image(s)
      expect(typeof r.ok).toBe('boolean')
      if (!r.ok) expect(r.problems.length).toBeGreaterThan(0)
    }), { numRuns: 200 })
  })
})

/** A JPEG with extra segments spliced in right after SOI (before its APP0). */
function jpegWithPrefixSegments (width: number, height: number, extra: Buffer): Buffer {
  const jpg = makeJpeg(width, height)
  return Buffer.concat([jpg.subarray(0, 2), extra, jpg.subarray(2)])
}

function appSegment (size: number): Buffer {
  const seg = Buffer.alloc(4 + size, 0x41)
  seg[0] = 0xff
  seg[1] = 0xe1
  seg.writeUInt16BE(size + 2, 2)
  return seg
}

describe('JPEG header walk', () => {
  it('hands image-size only the bytes up to the frame header', () => {
    const jpg = makeJpeg(640, 480)
    const sof = jpg.indexOf(Buffer.from([0xff, 0xc0]))
    const header = jpegHeaderBytes(jpg)
    expect(header.length).toBe(sof + 2 + jpg.readUInt16BE(sof + 2))
    expect(imageSize(header)).toMatchObject({ width: 640, height: 480 })
  })

  it('follows a long chain of metadata segments before the frame header', () => {
    const extra = Buffer.concat(Array.from({ length: 16 }, () => appSegment(65_000))) // ~1 MB of APP1
    const jpg = jpegWithPrefixSegments(800, 600, extra)
    expect(jpegHeaderBytes(jpg).length).toBeGreaterThan(JPEG_TOLERANT_SCAN_BYTES)
    expect(descriptorOf(inspectBase64Image(b64(jpg))))
      .toMatchObject({ width: 800, height: 600, format: 'jpeg', bytes: jpg.length })
  })

  it('reports a JPEG truncated inside its frame header as unreadable', () => {
    const jpg = makeJpeg(640, 480)
    const truncated = jpg.subarray(0, jpg.indexOf(Buffer.from([0xff, 0xc0])) + 6)
    expect(problemsOf(inspectBase64Image(b64(truncated))))
      .toEqual([expect.stringContaining('could not read the JPG image dimensions')])
  })

  it('bounds the scan of megabytes of junk behind a JPEG signature', () => {
    const junk = Buffer.alloc(MAX_IMAGE_BYTES - 16)
    junk.set([0xff, 0xd8, 0xff, 0xe0, 0x00, 0x02])
    expect(jpegHeaderBytes(junk).length).toBe(JPEG_TOLERANT_SCAN_BYTES)
    expect(problemsOf(inspectBase64Image(b64(junk))))
      .toEqual([expect.stringContaining('could not read the JPG image dimensions')])
  })
})

describe('compareMask', () => {
  const image: ImageDescriptor = { sha256: 'a'.repeat(64), bytes: 1000, width: 1280, height: 720, format: 'jpeg' }

  it('is happy with a mask of the same resolution', () => {
    expect(compareMask({ ...image, sha256: 'b'.repeat(64), format: 'png' }, image)).toEqual([])
  })

  it('reports a different resolution with the same aspect ratio', () => {
    const problems = compareMask({ ...image, width: 640, height: 360 }, image)
    expect(problems).toEqual(['must have the same resolution as the first image (mask 640x360, image 1280x720)'])
  })

  it('reports a different aspect ratio and resolution', () => {
    const problems = compareMask({ ...image, width: 720, height: 720 }, image)
    expect(problems).toHaveLength(2)
    expect(problems[0]).toMatch(/aspect ratio/)
    expect(problems[1]).toMatch(/resolution/)
  })

  it('tolerates an aspect ratio within 1% (resolution still differs)', () => {
    const problems = compareMask({ ...image, width: 1290, height: 720 }, image)
    expect(problems).toEqual(['must have the same resolution as the first image (mask 1290x720, image 1280x720)'])
  })
})
