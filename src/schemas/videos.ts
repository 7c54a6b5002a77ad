import { Type, type Static, type TObject } from 'typebox'
import { TASK_STATUSES } from '../domain/task.ts'
import { VIDEO_KINDS, type VideoKind } from '../domain/kinds.ts'
import { CREATE_EXAMPLES } from './examples.ts'

/** A URL or Base64 (10 MB decoded is 13,981,016 characters, plus room for a `data:` prefix). */
// No maxLength: Ajv counts a 14 MB string character by character (~60 ms per image). The length is bounded by
// the route's body limit and checked by the image checks (URL ≤ 2048, decoded size ≤ 10 MB) before any decoding.
export const ImageStringSchema = Type.String({
  minLength: 1,
  contentEncoding: 'base64',
  description: 'https URL (≤ 2048 characters), or Base64 JPG/PNG ≤ 10 MB decoded (a data: prefix is stripped)'
})

const PointSchema = Type.Object({
  x: Type.Integer({ minimum: 0, maximum: 100_000 }),
  y: Type.Integer({ minimum: 0, maximum: 100_000 })
}, { additionalProperties: false })

export const CreateVideoSchema = Type.Object({
  image_list: Type.Array(
    Type.Object({ image: ImageStringSchema }, { additionalProperties: false }),
    { minItems: 2, maxItems: 4 }
  ),
  prompt: Type.String({ minLength: 1, maxLength: 500 }),
  negative_prompt: Type.Optional(Type.String({ maxLength: 200 })),
  model_name: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  mode: Type.Optional(Type.Union([Type.Literal('std'), Type.Literal('pro')])),
  duration: Type.Optional(Type.Union([Type.Literal('5'), Type.Literal('10'), Type.Literal(5), Type.Literal(10)])),
  aspect_ratio: Type.Optional(Type.Union([Type.Literal('16:9'), Type.Literal('9:16'), Type.Literal('1:1')])),
  cfg_scale: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
  static_mask: Type.Optional(ImageStringSchema),
  dynamic_masks: Type.Optional(Type.Array(Type.Object({
    mask: ImageStringSchema,
    trajectories: Type.Array(PointSchema, {
      minItems: 2,
      maxItems: 77,
      description: 'pixels, origin at the bottom-left corner'
    })
  }, { additionalProperties: false }), { minItems: 1, maxItems: 6 })),
  reference: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  webhook_url: Type.Optional(Type.String({ format: 'uri', maxLength: 2048 })),
  metadata: Type.Optional(Type.Object({}, {
    additionalProperties: true,
    maxProperties: 64,
    description: 'returned as given; at most 4 KB of JSON'
  }))
}, { additionalProperties: false, $id: 'CreateVideo', examples: [CREATE_EXAMPLES['multi-image2video']] })
export type CreateVideo = Static<typeof CreateVideoSchema>

// The fields image2video and text2video share with multi-image2video, as it defines them.
const shared = CreateVideoSchema.properties

/** Kling's limit on these endpoints (multi-image2video keeps CometAPI's stricter 500/200). */
const LONG_PROMPT = 2500
const Axis = Type.Optional(Type.Number({ minimum: -10, maximum: 10 }))
export const CAMERA_AXES = ['horizontal', 'vertical', 'pan', 'tilt', 'roll', 'zoom'] as const
const CAMERA_MOVES = ['simple', 'down_back', 'forward_up', 'right_turn_forward', 'left_turn_forward']

/** Kling's predefined camera moves (image2video and text2video). */
const CameraControlSchema = Type.Object({
  type: Type.Union(CAMERA_MOVES.map(t => Type.Literal(t)),
    { description: '`simple` moves along one axis of `config`; the others are fixed moves and take no `config`' }),
  config: Type.Optional(Type.Object(Object.fromEntries(CAMERA_AXES.map(a => [a, Axis])), {
    additionalProperties: false,
    description: 'for `simple` only: exactly one of the six non-zero, in [-10, 10]'
  }))
}, { additionalProperties: false })
const SoundSchema = Type.Union([Type.Literal('on'), Type.Literal('off')], { description: 'kling-v2-6 and later' })
const WatermarkSchema = Type.Object({ enabled: Type.Boolean() },
  { additionalProperties: false, description: 'also make a watermarked copy' })
const VoiceSchema = Type.Object({ voice_id: Type.String({ minLength: 1, maxLength: 128 }) },
  { additionalProperties: false })

/** `POST /v1/videos/image2video`: one image (and an optional end frame) to video. */
export const CreateImage2VideoSchema = Type.Object({
  image: ImageStringSchema,
  image_tail: Type.Optional(ImageStringSchema),
  prompt: Type.Optional(Type.String({ minLength: 1, maxLength: LONG_PROMPT })),
  negative_prompt: Type.Optional(Type.String({ maxLength: LONG_PROMPT })),
  model_name: shared.model_name,
  mode: shared.mode,
  duration: shared.duration,
  cfg_scale: shared.cfg_scale,
  static_mask: shared.static_mask,
  dynamic_masks: shared.dynamic_masks,
  camera_control: Type.Optional(CameraControlSchema),
  sound: Type.Optional(SoundSchema),
  voice_list: Type.Optional(Type.Array(VoiceSchema,
    { minItems: 1, maxItems: 2, description: 'kling-v2-6 and later, with `sound: "on"`' })),
  watermark_info: Type.Optional(WatermarkSchema),
  reference: shared.reference,
  webhook_url: shared.webhook_url,
  metadata: shared.metadata
}, {
  additionalProperties: false,
  $id: 'CreateImage2Video',
  examples: [CREATE_EXAMPLES.image2video],
  description: 'image_tail, the masks (static_mask/dynamic_masks) and camera_control exclude one another'
})

/** `POST /v1/videos/text2video`: a prompt to video. */
export const CreateText2VideoSchema = Type.Object({
  prompt: Type.String({ minLength: 1, maxLength: LONG_PROMPT }),
  negative_prompt: Type.Optional(Type.String({ maxLength: LONG_PROMPT })),
  model_name: shared.model_name,
  mode: shared.mode,
  duration: shared.duration,
  aspect_ratio: shared.aspect_ratio,
  cfg_scale: shared.cfg_scale,
  camera_control: Type.Optional(CameraControlSchema),
  sound: Type.Optional(SoundSchema),
  watermark_info: Type.Optional(WatermarkSchema),
  reference: shared.reference,
  webhook_url: shared.webhook_url,
  metadata: shared.metadata
}, { additionalProperties: false, $id: 'CreateText2Video', examples: [CREATE_EXAMPLES.text2video] })

/** Each kind's create body. A new kind is a schema here and its name in VIDEO_KINDS. */
export const CREATE_SCHEMAS: Record<VideoKind, TObject> = {
  'multi-image2video': CreateVideoSchema,
  image2video: CreateImage2VideoSchema,
  text2video: CreateText2VideoSchema
}

/** Create fields that belong to the task itself, not to the request it sends upstream. */
export const TASK_FIELDS = new Set(['reference', 'metadata'])

/** What the gateway fills in for a field left out (every kind has these), so the task shows what upstream got. */
export const FILLED_IN: Record<string, string> = { model_name: 'kling-v1-6', mode: 'std', duration: '5' }

const ImageDescriptorSchema = Type.Object({
  sha256: Type.String(), bytes: Type.Integer(), width: Type.Integer(), height: Type.Integer(), format: Type.String()
})
const ImageRefSchema = Type.Union([Type.String(), ImageDescriptorSchema])

type Json = Record<string, unknown>
/**
 * How a stored request shows a create schema's field: images as URL or descriptor, and without the create limits,
 * so a task stored under older limits still serializes.
 */
function fieldView (schema: Json): Json {
  if (schema.contentEncoding === 'base64') return ImageRefSchema as unknown as Json
  if (schema.type === 'array') return { type: 'array', items: fieldView(schema.items as Json) }
  if (schema.type === 'object') {
    const fields = Object.entries(schema.properties as Record<string, Json>)
    const properties = Object.fromEntries(fields.map(([k, v]) => [k, fieldView(v)]))
    return { type: 'object', properties, ...(Array.isArray(schema.required) && { required: schema.required }) }
  }
  if (Array.isArray(schema.anyOf)) {
    // A union of literals: its one JSON type (or any, for `duration`'s strings and numbers).
    const types = new Set((schema.anyOf as Json[]).map(s => s.type))
    return types.size === 1 ? { type: [...types][0] } : {}
  }
  return { type: schema.type }
}

/**
 * The task's `request`: every kind's fields in one object (the task's `kind` says which apply). The defaults the
 * gateway fills in are always there.
 */
function requestView (): Json {
  const properties: Record<string, Json> = {}
  for (const schema of Object.values(CREATE_SCHEMAS)) {
    for (const [key, field] of Object.entries(schema.properties as Record<string, Json>)) {
      if (!TASK_FIELDS.has(key)) properties[key] ??= fieldView(field)
    }
  }
  return { type: 'object', properties, required: Object.keys(FILLED_IN) }
}

export const TaskSchema = Type.Object({
  id: Type.String(),
  kind: Type.Union(VIDEO_KINDS.map(k => Type.Literal(k)), { description: 'the Kling endpoint that makes it' }),
  status: Type.Union(TASK_STATUSES.map(s => Type.Literal(s))),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
  reference: Type.Union([Type.String(), Type.Null()]),
  metadata: Type.Union([Type.Object({}, { additionalProperties: true }), Type.Null()]),
  request: Type.Unsafe<Record<string, unknown>>({
    ...requestView(),
    description: 'the create body as accepted (the fields of the task\'s `kind`); Base64 images replaced by their ' +
      'descriptors'
  }),
  upstream: Type.Union([Type.Object({
    task_id: Type.String(),
    status: Type.String(),
    status_msg: Type.Union([Type.String(), Type.Null()])
  }), Type.Null()]),
  result: Type.Union([Type.Object({
    videos: Type.Array(Type.Object({
      id: Type.String(),
      url: Type.String(),
      duration: Type.Union([Type.String(), Type.Null()]),
      upstream_url: Type.String(),
      upstream_expires_at: Type.Union([Type.String(), Type.Null()], {
        description: 'when the upstream URL stops working: 30 days after upstream finished, or sooner when the URL ' +
          'says so; the copy is retried until then'
      }),
      copy_error: Type.Optional(Type.Union([Type.Object({ code: Type.String(), message: Type.String() }),
        Type.Null()], {
        description: 'only when the copy gave up for good (`UPSTREAM_URL_EXPIRED`: the upstream URL expired first); ' +
          'the content then answers 410'
      }))
    }))
  }), Type.Null()]),
  error: Type.Union([Type.Object({ code: Type.String(), message: Type.String() }), Type.Null()]),
  attention: Type.Union([Type.Object({
    code: Type.String({ description: '`CREATE_UNCONFIRMED` or `DEADLINE_UNCONFIRMED`' }),
    message: Type.String(),
    since: Type.String({ format: 'date-time' })
  }), Type.Null()], {
    description: 'held for an operator: a create may have made a paid upstream task the gateway cannot confirm, so ' +
      'it is neither failed nor sent again (`POST /v1/videos/{id}/resolve`); null otherwise'
  }),
  sequence: Type.Integer({ description: 'number of the last event' })
}, { $id: 'Task' })

export const TaskParamsSchema = Type.Object({
  id: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9-]+$' })
})

export const ListQuerySchema = Type.Object({
  status: Type.Optional(Type.Union(TASK_STATUSES.map(s => Type.Literal(s)))),
  attention: Type.Optional(Type.Boolean({
    description: '`true`: only tasks held for an operator (`attention` set); not with `status` or `reference`'
  })),
  reference: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  caller: Type.Optional(Type.String({
    minLength: 1,
    maxLength: 64,
    pattern: '^[A-Za-z0-9_.-]+$',
    description: 'only this caller\'s tasks (an admin key: any caller; required with `reference`, as references ' +
      'are per caller); another key sees nothing under another caller\'s name'
  })),
  limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
  cursor: Type.Optional(Type.String({ maxLength: 100, pattern: '^\\d+:[A-Za-z0-9-]+$' }))
}, { additionalProperties: false })

export const IdempotencyHeadersSchema = Type.Object({
  'idempotency-key': Type.Optional(Type.String({
    minLength: 1,
    maxLength: 255,
    description: 'the same key and body within 24 h return the first task (202, `idempotent-replayed: true`); ' +
      'another body with it is 422. Send one whenever you may retry.'
  }))
})
