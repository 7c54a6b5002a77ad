import { randomFillSync } from 'node:crypto'
import { deflateSync } from 'node:zlib'
import { pngChunk as chunk } from '../../test/helpers/images.ts'

/**
 * A valid 8-bit RGB PNG of side × side pixels of random (incompressible) data, stored with deflate level 0 so its
 * size is known: side 1860 gives 10,381,518 bytes, just under the gateway's 10 MiB per image. Same structure as
 * test/helpers/images.ts makePng, with colour and noise so that nothing along the way can compress it.
 */
export function noisyPng (side = 1860): Buffer {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(side, 0)
  ihdr.writeUInt32BE(side, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 2 // colour type: RGB
  const stride = 1 + side * 3
  const raw = randomFillSync(Buffer.alloc(stride * side))
  for (let y = 0; y < side; y++) raw[y * stride] = 0 // filter type None on every scanline
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw, { level: 0 })),
    chunk('IEND', Buffer.alloc(0))
  ])
}

/** The create body with `count` different maximal Base64 images, as bytes ready to send. */
export function largeCreateBody (count = 4): { body: Buffer, imageBytes: number[] } {
  const images = Array.from({ length: count }, () => noisyPng())
  const json = JSON.stringify({
    image_list: images.map(png => ({ image: png.toString('base64') })),
    prompt: 'A slow pan across four large images, benchmark body',
    duration: '5',
    mode: 'std'
  })
  return { body: Buffer.from(json), imageBytes: images.map(png => png.length) }
}
