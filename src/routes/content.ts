import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { Conflict, GatewayError, NotFound } from '../domain/errors.ts'
import { copyFailed } from '../domain/task.ts'
import { videoKey } from '../jobs/copy.ts'
import { canSee, type Caller } from '../plugins/auth.ts'
import { internal, invalidField, LinkSigSchema, problem, unauthorized, unavailable } from '../schemas/common.ts'
import { MP4_EXAMPLE } from '../schemas/examples.ts'
import { TaskParamsSchema } from '../schemas/videos.ts'

/**
 * `bytes=a-b`, `bytes=a-` or `bytes=-n` against a size; null when unsatisfiable, undefined when absent or
 * multi-range.
 */
export function parseRange (
  header: string | undefined,
  size: number
): { start: number, end: number } | null | undefined {
  if (header === undefined) return undefined
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (m === null || (m[1] === '' && m[2] === '')) return undefined
  let start: number
  let end: number
  if (m[1] === '') {
    start = Math.max(0, size - Number(m[2]))
    end = size - 1
  } else {
    start = Number(m[1])
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1)
  }
  return start > end || start >= size ? null : { start, end }
}

/** `GET /v1/videos/:id/content`: the gateway's copy of a result video, with Range support. */
const content: FastifyPluginAsyncTypebox = async (app) => {
  const { store, blobs } = app.deps

  app.get('/:id/content', {
    onRequest: app.authenticateOrLink('content'),
    schema: {
      tags: ['videos'],
      operationId: 'getVideoContent',
      summary: 'The mirrored result video (video/mp4, supports Range)',
      description: 'The gateway\'s copy of result video `index` of a succeeded task: `result.videos[].url` points ' +
        'here. One `Range: bytes=a-b`, `a-` or `-n` answers 206 (other forms get the whole video). The caller that ' +
        'owns the task, or an admin key. 409 `CONTENT_NOT_READY` (with Retry-After) while the copy is being made: ' +
        'retry, or wait for the `video.stored` event. 410 `UPSTREAM_URL_EXPIRED` when the upstream URL expired ' +
        'before the video could be copied (`video.copy_failed`). Instead of the Authorization header, a signed ' +
        'link\'s `?sig=` (`POST /v1/videos/{id}/links`) opens it, e.g. as a `<video src>`.',
      security: [{ bearer: [] }],
      params: TaskParamsSchema,
      querystring: Type.Object(
        { index: Type.Integer({ minimum: 0, maximum: 9, default: 0 }), sig: Type.Optional(LinkSigSchema) },
        { additionalProperties: false }
      ),
      response: {
        200: {
          description: 'the whole video',
          headers: { 'Content-Length': { type: 'integer' }, 'Accept-Ranges': { type: 'string', enum: ['bytes'] } },
          content: { 'video/mp4': { schema: Type.String({ format: 'binary' }), example: MP4_EXAMPLE } }
        },
        206: {
          description: 'the requested byte range',
          headers: {
            'Content-Range': { type: 'string', description: '`bytes a-b/size`' },
            'Content-Length': { type: 'integer' }
          },
          content: { 'video/mp4': { schema: Type.String({ format: 'binary' }), example: MP4_EXAMPLE } }
        },
        400: invalidField('invalid id or index', '/index', 'must be <= 9', 'query'),
        401: unauthorized(),
        404: problem(404, 'no such task or video for this caller'),
        409: problem(409, 'the task has not succeeded (`NOT_SUCCEEDED`), or its video is still being copied ' +
          '(`CONTENT_NOT_READY`, with Retry-After)', {
          code: 'CONTENT_NOT_READY',
          detail: 'the video is still being copied from upstream; retry shortly',
          headers: ['Retry-After']
        }),
        410: problem(410, 'the video was deleted after VIDEO_RETENTION_DAYS (`CONTENT_EXPIRED`), or the upstream URL ' +
          'expired before it could be copied (`UPSTREAM_URL_EXPIRED`: the video\'s `copy_error` says when)', {
          code: 'CONTENT_EXPIRED', detail: 'the video was deleted after its retention period'
        }),
        416: problem(416, 'the range starts past the end of the video; `Content-Range: bytes */size` gives the size', {
          headers: []
        }),
        500: internal(),
        503: unavailable()
      }
    }
  }, async (request, reply) => {
    const caller = request.caller as Caller
    const task = await store.get(request.params.id)
    if (!canSee(caller, task)) throw new NotFound('task')
    const index = request.query.index
    if (task.status !== 'succeeded') {
      throw new Conflict('NOT_SUCCEEDED', `the task is ${task.status}; content exists only once it has succeeded`)
    }
    if (index >= (task.result?.videos.length ?? 0)) throw new NotFound('video')
    if (task.storedExpired) {
      throw new GatewayError('CONTENT_EXPIRED', 410, 'the video was deleted after its retention period')
    }
    const copyError = task.result?.videos[index].copy_error
    if (copyError !== undefined && copyError !== null) {
      throw new GatewayError('UPSTREAM_URL_EXPIRED', 410, copyError.message)
    }
    // After a copy given up, the videos it did copy are served (none is being copied any more).
    const done = task.storedAt !== null || copyFailed(task)
    const info = done ? await blobs.stat(videoKey(task.id, index)) : null
    if (info === null) {
      throw new GatewayError(
        'CONTENT_NOT_READY', 409, 'the video is still being copied from upstream; retry shortly', undefined,
        { 'retry-after': '5' }
      )
    }

    const range = parseRange(request.headers.range, info.size)
    reply.header('accept-ranges', 'bytes')
      .header('content-type', info.contentType)
      .header('cache-control', 'private, max-age=3600')
    if (range === null) {
      reply.header('content-range', `bytes */${info.size}`)
      throw new GatewayError('RANGE_NOT_SATISFIABLE', 416, `the video has ${info.size} bytes`)
    }
    if (range === undefined) {
      reply.header('content-length', info.size)
      return await reply.code(200).send(await blobs.read(videoKey(task.id, index)))
    }
    reply.header('content-range', `bytes ${range.start}-${range.end}/${info.size}`)
      .header('content-length', range.end - range.start + 1)
    return await reply.code(206).send(await blobs.read(videoKey(task.id, index), range))
  })
}
export default content
