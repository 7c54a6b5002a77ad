/**
 * The kinds of video task the gateway makes: each is one Kling endpoint (`/v1/videos/<kind>`), with its own create
 * schema (src/schemas/videos.ts). Everything else (routes, the stored task, submit, reconcile, the adapters' paths)
 * is derived from the kind, so a new kind is its schema plus one entry here.
 */
export const VIDEO_KINDS = ['multi-image2video', 'image2video', 'text2video'] as const
export type VideoKind = typeof VIDEO_KINDS[number]

/** What `POST /v1/videos` makes, and what a task stored before kinds existed is. */
export const DEFAULT_KIND: VideoKind = 'multi-image2video'

export function isVideoKind (v: unknown): v is VideoKind {
  return typeof v === 'string' && (VIDEO_KINDS as readonly string[]).includes(v)
}
