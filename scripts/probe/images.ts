/**
 * The probe's input images, made here so it needs no files and no third-party URLs: PNGs that pass the gateway's
 * own image checks and Kling's (≥ 300 px, aspect within 1:2.5–2.5:1), with enough in them to make a video of.
 */
import { deflateSync } from 'node:zlib'
import { pngChunk as chunk } from '../../test/helpers/images.ts'

export const IMAGE_SIZE = 512

/** A PNG of `channels` (1 grey, 3 RGB) whose pixel at (x, y) is `pixel(x, y)`. */
function png (size: number, channels: 1 | 3, pixel: (x: number, y: number) => number[]): Buffer {
  const header = Buffer.alloc(13)
  header.writeUInt32BE(size, 0)
  header.writeUInt32BE(size, 4)
  header[8] = 8
  header[9] = channels === 3 ? 2 : 0
  const stride = 1 + size * channels
  const raw = Buffer.alloc(stride * size)
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) raw.set(pixel(x, y), y * stride + 1 + x * channels)
  }
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
  return Buffer.concat([signature, chunk('IHDR', header), chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0))])
}

/** A gradient with a disc in it; `hue` 0 or 1 gives two different pictures. */
export function pictureBase64 (hue: 0 | 1): string {
  const c = IMAGE_SIZE / 2
  return png(IMAGE_SIZE, 3, (x, y) => {
    const inDisc = (x - c) ** 2 + (y - c * (hue === 0 ? 0.8 : 1.2)) ** 2 < (IMAGE_SIZE / 5) ** 2
    const a = Math.round(255 * x / IMAGE_SIZE)
    const b = Math.round(255 * y / IMAGE_SIZE)
    if (inDisc) return hue === 0 ? [250, 210, 40] : [40, 200, 250]
    return hue === 0 ? [a, 90, b] : [b, a, 120]
  }).toString('base64')
}

/** A mask of the same size as the pictures: white (painted) over the centre square, black elsewhere. */
export function maskBase64 (): string {
  const lo = IMAGE_SIZE / 4
  const hi = IMAGE_SIZE - lo
  return png(IMAGE_SIZE, 1, (x, y) => [x >= lo && x < hi && y >= lo && y < hi ? 255 : 0]).toString('base64')
}
