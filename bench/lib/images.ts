import { noisyPng } from '../../test/helpers/images.ts'

/** The create body with `count` different maximal Base64 images, as bytes ready to send. */
export function largeCreateBody (count = 4): { body: Buffer, imageBytes: number[] } {
  const images = Array.from({ length: count }, () => noisyPng(1860))
  const json = JSON.stringify({
    image_list: images.map(png => ({ image: png.toString('base64') })),
    prompt: 'A slow pan across four large images, benchmark body',
    duration: '5',
    mode: 'std'
  })
  return { body: Buffer.from(json), imageBytes: images.map(png => png.length) }
}
