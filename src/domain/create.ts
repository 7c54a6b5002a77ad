/**
 * Everything a create is checked for beyond its JSON schema (docs/API.md, "POST /v1/videos"), for every kind:
 * Base64 images by their header bytes (wherever the kind's schema has an image), the model allow-list and what the
 * model does on the kind (src/domain/models.ts: modes, durations, masks and the other optional features), the metadata
 * size, the webhook scheme, and each kind's own cross-field rules (masks against their image, the camera controls,
 * what excludes what). Pure: returns every problem at once, or the request as it will be stored plus the decoded
 * images to park.
 */
import { createHash, randomBytes } from 'node:crypto'
import { CAMERA_AXES, CREATE_SCHEMAS, FILLED_IN, TASK_FIELDS } from '../schemas/videos.ts'
import type { FieldError } from './errors.ts'
import { compareMask, inspectBase64Image, isUrl, type ImageDescriptor } from './images.ts'
import { DEFAULT_KIND, type VideoKind } from './kinds.ts'
import type { IntakeVerdict } from './image-intake.ts'
import { DEFAULT_MODEL_TABLE, modelProblems, type ModelTable } from './models.ts'
import { CANNOT_USE } from '../notify/ssrf.ts'

export const MAX_METADATA_BYTES = 4096
const MAX_URL_LENGTH = 2048

export interface CheckedCreate {
  kind: VideoKind
  /** The request as the task shows it: defaults filled in, Base64 images replaced by descriptors. */
  request: Record<string, unknown>
  /** Decoded images by JSON pointer into `request` (for example `/image_list/1/image`). */
  images: Map<string, Buffer>
  /** Bytes of the images a streamed body already parked (src/services/intake.ts); 0 for a body read whole. */
  streamedBytes: number
  /** SHA-256 of the canonical request (images by their hash): the Idempotency-Key fingerprint. */
  fingerprint: string
}

export interface CreateRules {
  allowedModels: string[]
  allowInsecureWebhooks: boolean
  /** What each model does on each kind (src/domain/models.ts); the defaults without it. */
  models?: ModelTable
}

type Obj = Record<string, unknown>
/** The images of a streamed body, by the placeholder standing in for each (src/services/intake.ts). */
export type StreamedImages = Map<string, { pointer: string, verdict: IntakeVerdict, start: string }>
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v)

/** JSON with sorted keys, so the same request always hashes the same. */
export function canonicalJson (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`
  }
  return JSON.stringify(value)
}

/** What a kind's own rule gets: the body as sent, the request being built, the Base64 images read so far. */
interface RuleContext {
  body: Obj
  request: Obj
  descriptors: Map<string, ImageDescriptor>
  problem: (pointer: string, detail: string) => void
}

/** A Base64 mask must match its Base64 image (Kling fails the task otherwise, after it was paid for). */
function maskMatches (c: RuleContext, maskPointer: string, imagePointer: string, imageName: string): void {
  const mask = c.descriptors.get(maskPointer)
  const image = c.descriptors.get(imagePointer)
  if (mask !== undefined && image !== undefined) {
    for (const detail of compareMask(mask, image, imageName)) c.problem(maskPointer, detail)
  }
}

/** `simple` moves along exactly one axis of `config`; the fixed moves take no `config` (Kling's camera_control). */
function cameraRules (c: RuleContext): void {
  const camera = c.body.camera_control
  if (!isObj(camera) || typeof camera.type !== 'string') return
  const config = camera.config
  if (camera.type === 'simple') {
    if (!isObj(config)) return c.problem('/camera_control/config', 'is required when type is "simple"')
    // An axis Kling does not have is the schema's to name; counting moves without it would only repeat that.
    if (Object.keys(config).some(k => !(CAMERA_AXES as readonly string[]).includes(k))) return
    const moves = CAMERA_AXES.filter(axis => typeof config[axis] === 'number' && config[axis] !== 0).length
    if (moves !== 1) {
      const axes = CAMERA_AXES.join(', ')
      c.problem('/camera_control/config', `must set exactly one of ${axes} to a non-zero value (got ${moves})`)
    }
  } else if (config !== undefined) {
    c.problem('/camera_control/config', `must be left out when type is "${camera.type}" (only "simple" takes a config)`)
  }
}

/** Kling takes one of these per image2video request. */
const I2V_EXCLUSIVE = [['image_tail'], ['static_mask', 'dynamic_masks'], ['camera_control']]

/** Each kind's rules across fields; a kind without any needs no entry. */
const KIND_RULES: Partial<Record<VideoKind, (c: RuleContext) => void>> = {
  'multi-image2video': c => { maskMatches(c, '/static_mask', '/image_list/0/image', 'the first image') },
  image2video: c => {
    maskMatches(c, '/static_mask', '/image', 'the image')
    const masks = Array.isArray(c.request.dynamic_masks) ? c.request.dynamic_masks : []
    masks.forEach((_, i) => { maskMatches(c, `/dynamic_masks/${i}/mask`, '/image', 'the image') })
    const used = I2V_EXCLUSIVE.map(group => group.filter(f => c.body[f] !== undefined)).filter(g => g.length > 0)
    if (used.length > 1) {
      const names = I2V_EXCLUSIVE.map(g => g.join('/')).join(', ')
      const detail = `cannot be combined with the others of: ${names} (Kling takes one)`
      for (const field of used.flat()) c.problem(`/${field}`, detail)
    }
    cameraRules(c)
    if (c.body.voice_list !== undefined && c.body.sound !== 'on') c.problem('/voice_list', 'needs sound "on"')
  },
  text2video: cameraRules
}

/**
 * Checks a create body of `kind` against everything its schema cannot say. Defensive about shapes: it also runs on
 * bodies that failed their schema, so that image problems are listed beside the schema's own (every wrong field
 * named in one answer).
 */
export function checkCreate (kind: VideoKind, body: Obj, rules: CreateRules, streamed?: StreamedImages):
{ ok: true, value: CheckedCreate } | { ok: false, errors: FieldError[] } {
  const errors: FieldError[] = []
  let streamedBytes = 0
  const problem = (pointer: string, detail: string) => { errors.push({ pointer, detail, location: 'body' }) }
  const images = new Map<string, Buffer>()
  const descriptors = new Map<string, ImageDescriptor>()

  const tooLongUrl = `an image URL must be at most ${MAX_URL_LENGTH} characters`
  const image = (pointer: string, value: string): string | ImageDescriptor => {
    if (isUrl(value)) {
      if (!/^https:\/\//i.test(value)) problem(pointer, 'an image URL must use https')
      else if (value.length > MAX_URL_LENGTH) problem(pointer, tooLongUrl)
      else if (!URL.canParse(value)) problem(pointer, 'is not a valid URL')
      return value
    }
    const diverted = streamed?.get(value)
    if (diverted !== undefined && isUrl(diverted.start)) {
      // A URL of more than 64 KB, streamed like an image: refused as the checks above refuse a long one.
      problem(pointer, /^https:\/\//i.test(diverted.start) ? tooLongUrl : 'an image URL must use https')
      return value
    }
    if (diverted !== undefined) {
      // Checked as it arrived, the same checks as below; its bytes are parked already, under this pointer.
      const verdict = diverted.pointer === pointer
        ? diverted.verdict
        : { ok: false as const, problems: ['could not be read as an image'] }
      if (!verdict.ok) {
        for (const detail of verdict.problems) problem(pointer, detail)
        return value
      }
      streamedBytes += verdict.descriptor.bytes
      descriptors.set(pointer, verdict.descriptor)
      return verdict.descriptor
    }
    const inspected = inspectBase64Image(value)
    if (!inspected.ok) {
      for (const detail of inspected.problems) problem(pointer, detail)
      return value
    }
    images.set(pointer, inspected.data)
    descriptors.set(pointer, inspected.descriptor)
    return inspected.descriptor
  }

  // The value as the task keeps it, following the kind's schema: every string the schema marks as an image (a
  // Base64 `contentEncoding`) is checked and, if Base64, replaced by its descriptor; fields it does not know are left.
  const collect = (schema: Obj, value: unknown, pointer: string): unknown => {
    if (schema.contentEncoding === 'base64') return typeof value === 'string' ? image(pointer, value) : value
    if (Array.isArray(value) && isObj(schema.items)) {
      const items = schema.items
      return value.map((item, i) => collect(items, item, `${pointer}/${i}`))
    }
    if (isObj(value) && isObj(schema.properties)) {
      const out: Obj = {}
      for (const [key, field] of Object.entries(schema.properties)) {
        if (value[key] !== undefined && isObj(field)) out[key] = collect(field, value[key], `${pointer}/${key}`)
      }
      return out
    }
    return value
  }

  const request: Obj = {}
  for (const [key, field] of Object.entries(CREATE_SCHEMAS[kind].properties)) {
    if (TASK_FIELDS.has(key)) continue
    const value = body[key] ?? FILLED_IN[key]
    if (value !== undefined) request[key] = collect(field as unknown as Obj, value, `/${key}`)
  }
  // Kling's duration is a string; callers may send the number.
  if (typeof request.duration === 'number') request.duration = String(request.duration)

  KIND_RULES[kind]?.({ body, request, descriptors, problem })
  if (typeof request.model_name === 'string' && !rules.allowedModels.includes(request.model_name)) {
    problem('/model_name', `must be one of: ${rules.allowedModels.join(', ')}`)
  } else if (typeof request.model_name === 'string') {
    // Only for a model the operator allows: what another model could do is beside the point.
    errors.push(...modelProblems(kind, request, body, rules.models ?? DEFAULT_MODEL_TABLE))
  }
  if (isObj(body.metadata) && jsonBytesOver(body.metadata, MAX_METADATA_BYTES)) {
    problem('/metadata', `must be at most ${MAX_METADATA_BYTES} bytes of JSON`)
  }
  if (typeof body.webhook_url === 'string') {
    const url = URL.canParse(body.webhook_url) ? new URL(body.webhook_url) : null
    if (url === null) {
      problem('/webhook_url', 'must be an https URL')
    } else if (!(url.protocol === 'https:' || (rules.allowInsecureWebhooks && url.protocol === 'http:'))) {
      // The one refusal message of webhook targets, naming the setting that allows http (src/notify/ssrf.ts).
      problem('/webhook_url', CANNOT_USE)
    } else if (url.username !== '' || url.password !== '') {
      problem('/webhook_url', 'must not carry credentials')
    }
  }
  if (errors.length > 0) return { ok: false, errors }

  // The default kind hashes as it did before there were kinds, so a retry across the upgrade still replays.
  const fingerprint = createHash('sha256').update(canonicalJson({
    request, reference: body.reference, metadata: body.metadata, ...(kind !== DEFAULT_KIND && { kind })
  })).digest('hex')
  return { ok: true, value: { kind, request, images, streamedBytes, fingerprint } }
}

/**
 * The upstream body for a stored request, in pieces around its images: `pieces[k]`, then the Base64 of image
 * `images[k]` (a pointer among `parked`), …, then the last piece; our callback and external id added. The request is
 * already in its kind's shape (checkCreate built it from the kind's schema), so nothing here is per kind. The submit
 * job streams the images between the pieces, so the 56 MB string of a 4 × 10 MB create is never built.
 */
export function upstreamBodyParts (
  request: Record<string, unknown>,
  parked: Iterable<string>,
  extra: { callback_url: string, external_task_id: string }
): { pieces: string[], images: string[] } {
  const body = structuredClone(request)
  delete body.webhook_url
  // A marker no request can hold (a random word between NULs), replaced by each image's place.
  const nonce = randomBytes(8).toString('hex')
  const pointers: string[] = []
  for (const pointer of parked) {
    const path = pointer.split('/').slice(1)
    const last = path.pop() as string
    let target = body as Record<string, unknown> | undefined
    for (const part of path) target = isObj(target) || Array.isArray(target) ? (target as Obj)[part] as Obj : undefined
    if (target === undefined || !(last in target)) continue
    target[last] = `\u0000${nonce}:${pointers.length}\u0000`
    pointers.push(pointer)
  }
  const text = JSON.stringify({ ...body, ...extra })
  const split = text.split(new RegExp(`\\\\u0000${nonce}:(\\d+)\\\\u0000`))
  const pieces: string[] = []
  const images: string[] = []
  for (let i = 0; i < split.length; i++) {
    if (i % 2 === 0) pieces.push(split[i])
    else images.push(pointers[Number(split[i])])
  }
  return { pieces, images }
}

/**
 * Whether `value` written as JSON is longer than `limit` bytes, without writing a value that is much longer: a
 * walk adds up bytes the JSON surely has (and stops once past the limit); only a value it finds small is written
 * out and measured exactly. Stringifying a 10 MB metadata to learn it is over 4 KB cost 100 ms of event loop.
 */
export function jsonBytesOver (value: unknown, limit: number): boolean {
  let atLeast = 0
  const stack: unknown[] = [value]
  while (stack.length > 0 && atLeast <= limit) {
    const v = stack.pop()
    if (typeof v === 'string') atLeast += v.length + 2
    else if (Array.isArray(v)) {
      atLeast += 1 + v.length
      // Each item is at least one byte: past `limit` items the sum is over whatever they are.
      for (let i = 0; i < Math.min(v.length, limit + 1); i++) stack.push(v[i])
    } else if (v !== null && typeof v === 'object') {
      for (const [k, child] of Object.entries(v)) {
        atLeast += k.length + 4
        stack.push(child)
        if (atLeast > limit) break
      }
    } else atLeast += 1
  }
  return atLeast > limit || Buffer.byteLength(JSON.stringify(value)) > limit
}
