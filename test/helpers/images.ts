import { randomFillSync } from 'node:crypto'
import { crc32, deflateSync } from 'node:zlib'

/**
 * Real, decodable images built in memory, so tests need no fixture files.
 * Both are solid mid-grey, 8-bit, one channel.
 */

/** One PNG chunk: length, type, data, CRC-32 of type and data. Shared by the tests, the benchmarks and the probe. */
export function pngChunk (type: string, data: Buffer): Buffer {
  const typeAndData = Buffer.concat([Buffer.from(type, 'latin1'), data])
  const length = Buffer.alloc(4)
  length.writeUInt32BE(data.length)
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(typeAndData))
  return Buffer.concat([length, typeAndData, crc])
}

/** A valid grayscale PNG of width x height pixels. */
export function makePng (width: number, height: number, grey = 0x80): Buffer {
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 0 // colour type: grayscale
  ihdr[10] = 0 // compression: deflate
  ihdr[11] = 0 // filter method
  ihdr[12] = 0 // no interlace
  // Each scanline: filter type 0 (None) then one byte per pixel.
  const row = Buffer.alloc(1 + width, grey)
  row[0] = 0
  const raw = Buffer.alloc(row.length * height)
  for (let y = 0; y < height; y++) row.copy(raw, y * row.length)
  return Buffer.concat([
    signature,
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(raw)),
    pngChunk('IEND', Buffer.alloc(0))
  ])
}

/**
 * A valid 8-bit RGB PNG of random (incompressible) pixels, stored with deflate level 0 so its size is known: a
 * side of 1860 gives 10,381,518 bytes, just under the gateway's 10 MiB per image. For large bodies.
 */
export function noisyPng (width: number, height = width): Buffer {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 2 // colour type: RGB
  const stride = 1 + width * 3
  const raw = randomFillSync(Buffer.alloc(stride * height))
  for (let y = 0; y < height; y++) raw[y * stride] = 0 // filter type None on every scanline
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(raw, { level: 0 })),
    pngChunk('IEND', Buffer.alloc(0))
  ])
}

function jpegSegment (marker: number, data: number[]): number[] {
  const length = data.length + 2
  return [0xff, marker, length >> 8, length & 0xff, ...data]
}

/**
 * A valid baseline grayscale JPEG of width x height pixels (every block is mid-grey).
 * Huffman tables hold a single 1-bit code: DC category 0 and AC end-of-block,
 * so each 8x8 block is two 0 bits.
 */
export function makeJpeg (width: number, height: number): Buffer {
  const app0 = jpegSegment(0xe0, [
    0x4a, 0x46, 0x49, 0x46, 0x00, // "JFIF\0"
    0x01, 0x01, // version 1.1
    0x00, // no units
    0x00, 0x01, 0x00, 0x01, // 1:1 density
    0x00, 0x00 // no thumbnail
  ])
  const dqt = jpegSegment(0xdb, [0x00, ...new Array<number>(64).fill(1)])
  const sof0 = jpegSegment(0xc0, [
    0x08, // precision
    height >> 8, height & 0xff,
    width >> 8, width & 0xff,
    0x01, // one component
    0x01, 0x11, 0x00 // id 1, 1x1 sampling, quant table 0
  ])
  const oneCodeTable = [0x01, ...new Array<number>(15).fill(0), 0x00] // one code of length 1, symbol 0
  const dht = jpegSegment(0xc4, [0x00, ...oneCodeTable, 0x10, ...oneCodeTable]) // DC table 0, AC table 0
  const sos = jpegSegment(0xda, [0x01, 0x01, 0x00, 0x00, 0x3f, 0x00])
  const blocks = Math.ceil(width / 8) * Math.ceil(height / 8)
  const bits = blocks * 2
  const scan = Buffer.alloc(Math.ceil(bits / 8)) // all zero bits, so no 0xFF byte stuffing
  if (bits % 8 !== 0) scan[scan.length - 1] = 0xff >> (bits % 8) // pad the last byte with 1 bits
  return Buffer.concat([
    Buffer.from([0xff, 0xd8, ...app0, ...dqt, ...sof0, ...dht, ...sos]),
    scan,
    Buffer.from([0xff, 0xd9])
  ])
}
