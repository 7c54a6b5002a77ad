/**
 * Everything a create is checked for beyond its JSON schema (docs/API.md, "POST /v1/videos"): Base64 images by their
 * header bytes, the static mask against the first image, the model allow-list, the metadata size, the webhook scheme.
 * Pure: returns every problem at once, or the request as it will be stored plus the decoded images to park.
 */
import { createHash } from 'node:crypto'
import type { CreateVideo } from '../schemas/videos.ts'
import type { FieldError } from './errors.ts'
import { compareMask, inspectBase64Image, isUrl, type ImageDescriptor } from './images.ts'

export const MAX_METADATA_BYTES = 4096
const MAX_URL_LENGTH = 2048

export interface CheckedCreate {
  /** The request as the task shows it: defaults filled in, Base64 images replaced by descriptors. */
  request: Record<string, unknown>
  /** Decoded images by JSON pointer into `request` (for example `/image_list/1/image`). */
  images: Map<string, Buffer>
  /** SHA-256 of the canonical request (images by their hash): the Idempotency-Key fingerprint. */
  fingerprint: string
}

export interface CreateRules { allowedModels: string[], allowInsecureWebhooks: boolean }

/** JSON with sorted keys, so the same request always hashes the same. */
export function canonicalJson (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`
  }
  return JSON.stringify(value)
}

export function checkCreate (body: CreateVideo, rules: CreateRules): { ok: true, value: CheckedCreate } | { ok: false, errors: FieldError[] } {
  const errors: FieldError[] = []
  const images = new Map<string, Buffer>()
  const descriptors = new Map<string, ImageDescriptor>()

  const image = (pointer: string, value: string): string | ImageDescriptor => {
    if (isUrl(value)) {
      if (!/^https:\/\//i.test(value)) errors.push({ pointer, detail: 'an image URL must use https', location: 'body' })
      else if (value.length > MAX_URL_LENGTH) errors.push({ pointer, detail: `an image URL must be at most ${MAX_URL_LENGTH} characters`, location: 'body' })
      else if (!URL.canParse(value)) errors.push({ pointer, detail: 'is not a valid URL', location: 'body' })
      return value
    }
    const inspected = inspectBase64Image(value)
    if (!inspected.ok) {
      for (const detail of inspected.problems) errors.push({ pointer, detail, location: 'body' })
      return value
    }
    images.set(pointer, inspected.data)
    descriptors.set(pointer, inspected.descriptor)
    return inspected.descriptor
  }

  // Defensive reads: this also runs on bodies that failed their schema, so that image problems are listed
  // beside the schema's own (every wrong field named in one answer).
  const str = (v: unknown): v is string => typeof v === 'string'
  const list = (v: unknown): Array<Record<string, unknown>> | null => Array.isArray(v) ? v.map(x => (x !== null && typeof x === 'object' ? x : {}) as Record<string, unknown>) : null
  const request: Record<string, unknown> = {
    image_list: list(body.image_list)?.map((item, i) => ({ image: str(item.image) ? image(`/image_list/${i}/image`, item.image) : item.image })),
    prompt: body.prompt,
    negative_prompt: body.negative_prompt,
    model_name: body.model_name ?? 'kling-v1-6',
    mode: body.mode ?? 'std',
    duration: String(body.duration ?? '5'),
    aspect_ratio: body.aspect_ratio,
    cfg_scale: body.cfg_scale,
    static_mask: str(body.static_mask) ? image('/static_mask', body.static_mask) : body.static_mask,
    dynamic_masks: list(body.dynamic_masks)?.map((group, i) => ({ mask: str(group.mask) ? image(`/dynamic_masks/${i}/mask`, group.mask) : group.mask, trajectories: group.trajectories })),
    webhook_url: body.webhook_url
  }

  const mask = descriptors.get('/static_mask')
  const first = descriptors.get('/image_list/0/image')
  if (mask !== undefined && first !== undefined) {
    for (const detail of compareMask(mask, first)) errors.push({ pointer: '/static_mask', detail, location: 'body' })
  }
  if (str(request.model_name) && !rules.allowedModels.includes(request.model_name)) {
    errors.push({ pointer: '/model_name', detail: `must be one of: ${rules.allowedModels.join(', ')}`, location: 'body' })
  }
  if (body.metadata !== null && typeof body.metadata === 'object' && Buffer.byteLength(JSON.stringify(body.metadata)) > MAX_METADATA_BYTES) {
    errors.push({ pointer: '/metadata', detail: `must be at most ${MAX_METADATA_BYTES} bytes of JSON`, location: 'body' })
  }
  if (str(body.webhook_url)) {
    const url = URL.canParse(body.webhook_url) ? new URL(body.webhook_url) : null
    if (url === null || !(url.protocol === 'https:' || (rules.allowInsecureWebhooks && url.protocol === 'http:'))) {
      errors.push({ pointer: '/webhook_url', detail: 'must be an https URL', location: 'body' })
    } else if (url.username !== '' || url.password !== '') {
      errors.push({ pointer: '/webhook_url', detail: 'must not carry credentials', location: 'body' })
    }
  }
  if (errors.length > 0) return { ok: false, errors }

  for (const key of Object.keys(request)) if (request[key] === undefined) delete request[key]
  const fingerprint = createHash('sha256').update(canonicalJson({ request, reference: body.reference, metadata: body.metadata })).digest('hex')
  return { ok: true, value: { request, images, fingerprint } }
}

/** The upstream body for a stored request: parked images put back as Base64, our callback and external id added. */
export function upstreamBody (request: Record<string, unknown>, images: Map<string, Buffer>, extra: { callback_url: string, external_task_id: string }): Record<string, unknown> {
  const body = structuredClone(request)
  delete body.webhook_url
  for (const [pointer, data] of images) {
    const path = pointer.split('/').slice(1)
    const last = path.pop() as string
    let target = body as Record<string, unknown>
    for (const part of path) target = target[part] as Record<string, unknown>
    target[last] = data.toString('base64')
  }
  return { ...body, ...extra }
}
