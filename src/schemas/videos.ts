import { Type, type Static } from 'typebox'
import { TASK_STATUSES } from '../domain/task.ts'
import { VIDEO_KINDS } from '../domain/kinds.ts'

/** A URL or Base64 (10 MB decoded is 13,981,016 characters, plus room for a `data:` prefix). */
// No maxLength: Ajv counts a 14 MB string character by character (~60 ms per image). The length is bounded by
// the route's body limit and checked by the image checks (URL ≤ 2048, decoded size ≤ 10 MB) before any decoding.
export const ImageStringSchema = Type.String({ minLength: 1, contentEncoding: 'base64', description: 'https URL (≤ 2048 characters), or Base64 JPG/PNG ≤ 10 MB decoded (a data: prefix is stripped)' })

const PointSchema = Type.Object({ x: Type.Integer({ minimum: 0, maximum: 100_000 }), y: Type.Integer({ minimum: 0, maximum: 100_000 }) }, { additionalProperties: false })

export const CreateVideoSchema = Type.Object({
  image_list: Type.Array(Type.Object({ image: ImageStringSchema }, { additionalProperties: false }), { minItems: 2, maxItems: 4 }),
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
    trajectories: Type.Array(PointSchema, { minItems: 2, maxItems: 77, description: 'pixels, origin at the bottom-left corner' })
  }, { additionalProperties: false }), { minItems: 1, maxItems: 6 })),
  reference: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  webhook_url: Type.Optional(Type.String({ format: 'uri', maxLength: 2048 })),
  metadata: Type.Optional(Type.Object({}, { additionalProperties: true, maxProperties: 64, description: 'returned as given; at most 4 KB of JSON' }))
}, { additionalProperties: false, $id: 'CreateVideo' })
export type CreateVideo = Static<typeof CreateVideoSchema>

const ImageDescriptorSchema = Type.Object({
  sha256: Type.String(), bytes: Type.Integer(), width: Type.Integer(), height: Type.Integer(), format: Type.String()
})
const ImageRefSchema = Type.Union([Type.String(), ImageDescriptorSchema])

export const TaskSchema = Type.Object({
  id: Type.String(),
  kind: Type.Union(VIDEO_KINDS.map(k => Type.Literal(k)), { description: 'the Kling endpoint that makes it' }),
  status: Type.Union(TASK_STATUSES.map(s => Type.Literal(s))),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
  reference: Type.Union([Type.String(), Type.Null()]),
  metadata: Type.Union([Type.Object({}, { additionalProperties: true }), Type.Null()]),
  request: Type.Object({
    image_list: Type.Array(Type.Object({ image: ImageRefSchema })),
    prompt: Type.String(),
    negative_prompt: Type.Optional(Type.String()),
    model_name: Type.String(),
    mode: Type.String(),
    duration: Type.String(),
    aspect_ratio: Type.Optional(Type.String()),
    cfg_scale: Type.Optional(Type.Number()),
    static_mask: Type.Optional(ImageRefSchema),
    dynamic_masks: Type.Optional(Type.Array(Type.Object({ mask: ImageRefSchema, trajectories: Type.Array(Type.Object({ x: Type.Integer(), y: Type.Integer() })) }))),
    webhook_url: Type.Optional(Type.String())
  }, { description: 'the create body as accepted; Base64 images replaced by their descriptors' }),
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
      upstream_expires_at: Type.Union([Type.String(), Type.Null()])
    }))
  }), Type.Null()]),
  error: Type.Union([Type.Object({ code: Type.String(), message: Type.String() }), Type.Null()]),
  sequence: Type.Integer({ description: 'number of the last event' })
}, { $id: 'Task' })

export const TaskParamsSchema = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9-]+$' }) })

export const ListQuerySchema = Type.Object({
  status: Type.Optional(Type.Union(TASK_STATUSES.map(s => Type.Literal(s)))),
  reference: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
  cursor: Type.Optional(Type.String({ maxLength: 100, pattern: '^\\d+:[A-Za-z0-9-]+$' }))
}, { additionalProperties: false })

export const IdempotencyHeadersSchema = Type.Object({
  'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 255 }))
})
