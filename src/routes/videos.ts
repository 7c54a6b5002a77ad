import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import { checkCreate } from '../domain/create.ts'
import { DEFAULT_KIND, VIDEO_KINDS, type VideoKind } from '../domain/kinds.ts'
import { InvalidRequest, NotFound, Unavailable } from '../domain/errors.ts'
import { createTask } from '../services/create.ts'
import { cancelTask } from '../services/cancel.ts'
import { toView } from '../domain/task.ts'
import { problem } from '../schemas/common.ts'
import {
  CREATE_SCHEMAS, CreateVideoSchema, IdempotencyHeadersSchema, ListQuerySchema, TaskParamsSchema, TaskSchema
} from '../schemas/videos.ts'
import { canSee, type Caller } from '../plugins/auth.ts'
import { checkWebhookTarget, UnsafeTarget } from '../notify/ssrf.ts'
import { fieldErrorsOf, LOCATIONS } from '../plugins/errors.ts'

const errors = {
  400: problem('invalid request: every bad field is listed in `errors`'),
  401: problem('missing or unknown API key'),
  404: problem('no such task for this caller')
}

/** createMultiImage2Video, createImage2Video, createText2Video: a capital after a dash (dropped) or a digit. */
const operationIdOf = (kind: VideoKind): string => 'create' +
  kind.replace(/(^|-|\d)([a-z])/g, (_, before: string, c: string) => before.replace('-', '') + c.toUpperCase())

const videos: FastifyPluginAsyncTypebox = async (app) => {
  const { store, jobs, config } = app.deps
  const createDeps = {
    store, jobs, clock: app.deps.clock, ids: app.deps.ids, parkedMaxBytes: config.parkedMaxBytes, logger: app.deps.logger
  }
  app.addSchema(TaskSchema)
  app.addHook('onRequest', app.authenticate)

  // Bodies past LARGE_BODY_BYTES in flight at once on this replica: each can cost ~2× its size in memory while
  // parsed and decoded, so their number is capped before a byte of them is read.
  let largeInFlight = 0
  const limitLargeBodies = async (request: FastifyRequest, reply: FastifyReply) => {
    const length = Number(request.headers['content-length'] ?? Infinity)
    if (length <= config.create.largeBodyBytes) return
    if (largeInFlight >= config.create.maxLargeBodies) throw new Unavailable('too many large creates in flight; retry shortly', 2)
    largeInFlight++
    // The response's `close` comes once it is sent or the connection is gone, whichever is first.
    reply.raw.once('close', () => { largeInFlight-- })
  }

  app.post('/', {
    bodyLimit: config.createBodyLimit,
    onRequest: limitLargeBodies,
    // Validation errors are merged with the image checks below, so one answer names every bad field.
    attachValidation: true,
    schema: {
      tags: ['videos'],
      operationId: 'createVideo',
      summary: 'Create a multi-image-to-video task',
      security: [{ bearer: [] }],
      headers: IdempotencyHeadersSchema,
      body: CreateVideoSchema,
      response: {
        202: Type.Ref('Task'),
        ...errors,
        409: problem('the reference is taken (detail names the existing task)'),
        413: problem('body too large'),
        422: problem('the Idempotency-Key was used with a different body'),
        503: problem('Redis is unreachable or the write is not durable yet; retry after Retry-After')
      }
    }
  }, async (request, reply) => await create(DEFAULT_KIND, request, reply))

  // One route per kind, each with its own schema: its own operation in the OpenAPI document and the typed clients.
  for (const kind of VIDEO_KINDS) {
    app.post(`/${kind}`, {
      bodyLimit: config.createBodyLimit,
      onRequest: limitLargeBodies,
      attachValidation: true,
      schema: {
        tags: ['videos'],
        operationId: operationIdOf(kind),
        summary: `Create a ${kind} task`,
        security: [{ bearer: [] }],
        headers: IdempotencyHeadersSchema,
        body: CREATE_SCHEMAS[kind],
        response: {
          202: Type.Ref('Task'),
          ...errors,
          409: problem('the reference is taken (detail names the existing task)'),
          413: problem('body too large'),
          422: problem('the Idempotency-Key was used with a different body'),
          503: problem('Redis is unreachable or the write is not durable yet; retry after Retry-After')
        }
      }
    }, async (request, reply) => await create(kind, request, reply))
  }

  /** A create of any kind: the kind's schema has run (attachValidation), everything else is checked here. */
  async function create (kind: VideoKind, request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const caller = request.caller as Caller
    const raw = request.body as unknown
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
      throw new InvalidRequest([{ pointer: '/', detail: 'must be a JSON object', location: 'body' }])
    }
    const body = raw as { reference?: string, metadata?: Record<string, unknown>, webhook_url?: string }
    const rules = { allowedModels: config.allowedModels, allowInsecureWebhooks: config.webhooks.allowPrivate }
    const checked = checkCreate(kind, raw as Record<string, unknown>, rules)
    // With attachValidation, Fastify leaves here the first part that failed (body before headers): name its errors
    // by that part, and when the body failed first, check the headers too so that every bad field is listed.
    const invalid = request.validationError
    const schemaErrors = invalid === undefined ? [] : fieldErrorsOf(invalid.validation as never, LOCATIONS[invalid.validationContext] ?? 'body')
    const validateHeaders = invalid?.validationContext === 'body' ? request.getValidationFunction('headers') : undefined
    if (validateHeaders !== undefined && !validateHeaders(request.headers)) schemaErrors.push(...fieldErrorsOf((validateHeaders.errors ?? []) as never, 'headers'))
    const domainErrors = checked.ok ? [] : checked.errors.filter(d => !schemaErrors.some(e => e.pointer === d.pointer && e.location === d.location))
    if (schemaErrors.length > 0 || !checked.ok) throw new InvalidRequest([...schemaErrors, ...domainErrors])
    if (body.webhook_url !== undefined) {
      // Registration-time SSRF check (the delivery agent checks again at connect time).
      await checkWebhookTarget(body.webhook_url, { allowPrivate: config.webhooks.allowPrivate }).catch((err: Error) => {
        throw err instanceof UnsafeTarget ? new InvalidRequest([{ pointer: '/webhook_url', detail: err.message, location: 'body' }]) : err
      })
    }

    const { task, replayed } = await createTask(createDeps, {
      caller: caller.name,
      checked: checked.value,
      reference: body.reference ?? null,
      metadata: body.metadata ?? null,
      webhookUrl: body.webhook_url ?? null,
      // The headers schema has run: at most one key, a string.
      idempotencyKey: request.headers['idempotency-key'] as string | undefined
    })
    if (replayed) reply.header('idempotent-replayed', 'true')
    return await reply.code(202).header('location', `/v1/videos/${task.id}`).send(toView(task))
  }

  app.get('/:id', {
    schema: { tags: ['videos'], operationId: 'getVideo', security: [{ bearer: [] }], params: TaskParamsSchema, response: { 200: Type.Ref('Task'), ...errors } }
  }, async (request) => {
    const task = await store.get(request.params.id)
    if (!canSee(request.caller as Caller, task)) throw new NotFound('task')
    return toView(task)
  })

  app.get('/', {
    schema: {
      tags: ['videos'],
      operationId: 'listVideos',
      summary: 'List tasks, newest first',
      security: [{ bearer: [] }],
      querystring: ListQuerySchema,
      response: { 200: Type.Object({ data: Type.Array(Type.Ref('Task')), next_cursor: Type.Union([Type.String(), Type.Null()]) }), ...errors }
    }
  }, async (request) => {
    const caller = request.caller as Caller
    const { status, reference, limit, cursor } = request.query
    if (reference !== undefined) {
      // A reference is unique per caller, so this is a lookup, not a scan.
      const task = caller.admin ? null : await store.byReference(caller.name, reference)
      const found = task !== null && (status === undefined || task.status === status) ? [toView(task)] : []
      return { data: found, next_cursor: null }
    }
    const page = await store.list({ caller: caller.admin ? null : caller.name, status, limit, cursor })
    return { data: page.tasks.map(toView), next_cursor: page.nextCursor }
  })

  app.post('/:id/cancel', {
    schema: {
      tags: ['videos'],
      operationId: 'cancelVideo',
      summary: 'Cancel a task that has not gone upstream yet',
      security: [{ bearer: [] }],
      params: TaskParamsSchema,
      response: { 200: Type.Ref('Task'), ...errors, 409: problem('the task has left `queued`') }
    }
  }, async (request) => {
    const existing = await store.get(request.params.id)
    if (!canSee(request.caller as Caller, existing)) throw new NotFound('task')
    return toView(await cancelTask(store, existing))
  })
}
export default videos
