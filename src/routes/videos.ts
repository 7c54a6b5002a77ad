import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import { checkCreate } from '../domain/create.ts'
import { DEFAULT_KIND, VIDEO_KINDS, type VideoKind } from '../domain/kinds.ts'
import { CallerLimitExceeded, InvalidRequest, NotFound, Unavailable } from '../domain/errors.ts'
import { createTask } from '../services/create.ts'
import { takeCreateToken } from '../services/limits.ts'
import { callerLimitProblem } from '../schemas/limits.ts'
import { cancelTask } from '../services/cancel.ts'
import { toView } from '../domain/task.ts'
import {
  bodyProblems, internal, invalidField, json, operatorScopeRequired, problem, unauthorized, unavailable
} from '../schemas/common.ts'
import { TASK_EXAMPLE, taskExample } from '../schemas/examples.ts'
import {
  CREATE_SCHEMAS, CreateVideoSchema, IdempotencyHeadersSchema, ListQuerySchema, TaskParamsSchema, TaskSchema
} from '../schemas/videos.ts'
import { canSee, type Caller } from '../plugins/auth.ts'
import { audit, audited, changeable } from '../plugins/audit.ts'
import { checkWebhookTarget, UnsafeTarget } from '../notify/ssrf.ts'
import { fieldErrorsOf, LOCATIONS } from '../plugins/errors.ts'
import resolve from './resolve.ts'
import { limitsFor } from '../config/callers.ts'
import { CallerSlots, type Slot } from '../services/caller-slots.ts'
import { bodyDeadline } from '../plugins/body-deadline.ts'
import { bodyTooSlow } from '../schemas/replica-limits.ts'
import { createBodyParser, intakeOf, releaseIntake } from '../services/intake.ts'

const TaskRef = Type.Ref('Task')
const invalid = (what: string) => invalidField(`invalid ${what}, or a body that is not JSON: every bad field is listed`,
  '/id', 'must match pattern "^[A-Za-z0-9-]+$"', 'params')
const noTask = () => problem(404, 'no such task for this caller (another caller\'s task is 404 too, as a missing one)')
const ListSchema = Type.Object({ data: Type.Array(TaskRef), next_cursor: Type.Union([Type.String(), Type.Null()]) })

/** What every create answers, whatever its kind. */
const CREATE_DESCRIPTION = 'Validates the body as strictly as Kling would (every invalid field listed at once, ' +
  'Base64 images checked by format, size and aspect ratio), stores the task durably and queues it for exactly one ' +
  'upstream create. Any API key may call it; the task belongs to that key\'s caller.\n\n' +
  '**Models:** `model_name` must be in ALLOWED_MODELS, and the model capability table (MODEL_CAPABILITIES) must say ' +
  'the model makes this kind in that `mode` and `duration`, with the optional fields sent (`cfg_scale`, the masks, ' +
  '`camera_control`, `image_tail`); by default multi-image2video is kling-v1-6 only and takes no masks.\n\n' +
  '**Retries:** send an `Idempotency-Key` whenever you may retry. The same key and body within 24 h answer 202 ' +
  'with the task the first request made (header `idempotent-replayed: true`); the same key with another body ' +
  'is 422. A 503 (Redis unavailable, not durable in time, too many large bodies, too many parked images) is ' +
  'safe to retry after `Retry-After` with the same key.\n\n' +
  '**Limits:** a body over LARGE_BODY_BYTES takes, before it is read, one of the caller\'s `max_large_bodies` on ' +
  'this replica (full: 429 `CALLER_LIMIT`) and one of the replica\'s CREATE_MAX_LARGE_BODIES (full: 503). Every ' +
  'body must be in within CREATE_BODY_TIMEOUT_MS of its headers and, after the first 5 s, arrive at ' +
  'CREATE_BODY_MIN_BYTES_PER_S or faster over each 5 s; else 408 `REQUEST_TIMEOUT` and the connection is closed.'
const createResponses = (bodyLimit: number, kind: VideoKind) => ({
  202: json('accepted: the task, durable and queued; `Location` is its URL', TaskRef, { ...TASK_EXAMPLE, kind },
    ['Location', 'idempotent-replayed']),
  ...bodyProblems(`CREATE_BODY_LIMIT_BYTES (${bodyLimit} bytes)`),
  401: unauthorized(),
  408: bodyTooSlow(),
  409: problem(409, 'the `reference` is taken: detail names the existing task', {
    code: 'REFERENCE_TAKEN', detail: `reference is already used by task ${TASK_EXAMPLE.id}`
  }),
  422: problem(422, 'the Idempotency-Key was used with a different body'),
  429: callerLimitProblem('a per-caller limit is reached (`limit` names it: creates_per_minute, max_active_tasks, ' +
    'daily_units, max_large_bodies); nothing was created or charged', 'creates_per_minute', 120),
  500: internal(),
  503: unavailable(', the write did not reach enough replicas in time (REDIS_MIN_REPLICAS_ACKED), more than ' +
    'CREATE_MAX_LARGE_BODIES large bodies are in flight, or PARKED_MAX_BYTES of images already wait for upstream')
})

/** createMultiImage2Video, createImage2Video, createText2Video: a capital after a dash (dropped) or a digit. */
const operationIdOf = (kind: VideoKind): string => 'create' +
  kind.replace(/(^|-|\d)([a-z])/g, (_, before: string, c: string) => before.replace('-', '') + c.toUpperCase())

const videos: FastifyPluginAsyncTypebox = async (app) => {
  const { store, jobs, config } = app.deps
  const createDeps = {
    store,
    jobs,
    clock: app.deps.clock,
    ids: app.deps.ids,
    parkedMaxBytes: config.parkedMaxBytes,
    logger: app.deps.logger,
    callers: config.callers,
    onCharged: (caller: string, units: number) => { app.counters.callerUnits.inc({ caller }, units) }
  }
  const limitDeps = { limitStore: app.deps.limitStore, callers: config.callers }
  app.addSchema(TaskSchema)
  app.addHook('onRequest', app.authenticate)
  // Create bodies over LARGE_BODY_BYTES are read as they arrive, their images parked as they come
  // (src/services/intake.ts); whatever a create parked and no stored task took is freed once it is answered
  // (`onResponse` of the create routes).
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', createBodyParser({
    store,
    ids: app.deps.ids,
    parkedMaxBytes: config.parkedMaxBytes,
    largeBodyBytes: config.create.largeBodyBytes,
    schemaOf: request => {
      const kind = request.routeOptions.config.kind
      return kind === undefined ? null : CREATE_SCHEMAS[kind] as unknown as Record<string, unknown>
    }
  }))
  // On the create routes only: the reads' hot path gets no hook of its own.
  const releaseParked = async (request: FastifyRequest) => { await releaseIntake(store, request) }
  await app.register(resolve)

  // Bodies past LARGE_BODY_BYTES in flight at once on this replica: streamed (a few MB each, src/services/intake.ts),
  // but each still takes Redis writes, CPU and a parked-bytes share, so their number is capped before a byte of them
  // is read, in all (CREATE_MAX_LARGE_BODIES, 503) and per caller (max_large_bodies, 429), so that one caller cannot
  // take every slot.
  const largeBodies = new CallerSlots(config.create.maxLargeBodies)
  const slots = new WeakMap<FastifyRequest, Slot>()
  const limitLargeBodies = async (request: FastifyRequest, reply: FastifyReply) => {
    const length = Number(request.headers['content-length'] ?? Infinity)
    if (length <= config.create.largeBodyBytes) return
    const caller = (request.caller as Caller).name
    const max = limitsFor(config.callers, caller).maxLargeBodies
    const slot = largeBodies.take(caller, max)
    if (slot === 'caller') {
      throw new CallerLimitExceeded('max_large_bodies', max, 2, `caller limit max_large_bodies (${max}) reached: ` +
        `${max} large create bodies of this caller are in flight on this replica`)
    }
    if (slot === 'global') throw new Unavailable('too many large creates in flight; retry shortly', 2)
    slots.set(request, slot)
    // The response's `close` comes once it is sent or the connection is gone, whichever is first.
    reply.raw.once('close', slot.release)
  }
  // Every create body, large or not, must arrive in time; a cut one gives its slot back before its 408 is written.
  const deadline = bodyDeadline(
    { timeoutMs: config.create.bodyTimeoutMs, minBytesPerS: config.create.minBytesPerS },
    request => { slots.get(request)?.release() })

  app.post('/', {
    bodyLimit: config.createBodyLimit,
    onRequest: limitLargeBodies,
    preParsing: deadline,
    onResponse: releaseParked,
    config: { kind: DEFAULT_KIND },
    // Validation errors are merged with the image checks below, so one answer names every bad field.
    attachValidation: true,
    schema: {
      tags: ['videos'],
      operationId: 'createVideo',
      summary: 'Create a multi-image-to-video task',
      description: CREATE_DESCRIPTION + '\n\nThe same as `POST /v1/videos/multi-image2video`.',
      security: [{ bearer: [] }],
      headers: IdempotencyHeadersSchema,
      body: CreateVideoSchema,
      response: createResponses(config.createBodyLimit, DEFAULT_KIND)
    }
  }, async (request, reply) => await create(DEFAULT_KIND, request, reply))

  // One route per kind, each with its own schema: its own operation in the OpenAPI document and the typed clients.
  for (const kind of VIDEO_KINDS) {
    app.post(`/${kind}`, {
      bodyLimit: config.createBodyLimit,
      onRequest: limitLargeBodies,
      preParsing: deadline,
      onResponse: releaseParked,
      config: { kind },
      attachValidation: true,
      schema: {
        tags: ['videos'],
        operationId: operationIdOf(kind),
        summary: `Create a ${kind} task`,
        description: `Makes a task of kind \`${kind}\` (Kling's ${kind} endpoint). ${CREATE_DESCRIPTION}`,
        security: [{ bearer: [] }],
        headers: IdempotencyHeadersSchema,
        body: CREATE_SCHEMAS[kind],
        response: createResponses(config.createBodyLimit, kind)
      }
    }, async (request, reply) => await create(kind, request, reply))
  }

  /** A create of any kind: the kind's schema has run (attachValidation), everything else is checked here. */
  async function create (kind: VideoKind, request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const caller = request.caller as Caller
    // First, before the body is checked (images decoded, the webhook URL resolved): creates_per_minute. The headers
    // are not validated yet, so a key that is not one string is left to the 400 below (and takes a token).
    const idempotencyKey = request.headers['idempotency-key']
    await takeCreateToken(limitDeps, caller.name, typeof idempotencyKey === 'string' ? idempotencyKey : undefined)
    const raw = request.body as unknown
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
      throw new InvalidRequest([{ pointer: '/', detail: 'must be a JSON object', location: 'body' }])
    }
    const body = raw as { reference?: string, metadata?: Record<string, unknown>, webhook_url?: string }
    const rules = {
      allowedModels: config.allowedModels, allowInsecureWebhooks: config.webhooks.allowPrivate, models: config.models
    }
    const streamed = intakeOf(request)
    const checked = checkCreate(kind, raw as Record<string, unknown>, rules, streamed?.images)
    // With attachValidation, Fastify leaves here the first part that failed (body before headers): name its errors
    // by that part, and when the body failed first, check the headers too so that every bad field is listed.
    const invalid = request.validationError
    const schemaErrors = invalid === undefined
      ? []
      : fieldErrorsOf(invalid.validation as never, LOCATIONS[invalid.validationContext] ?? 'body')
    const validateHeaders = invalid?.validationContext === 'body' ? request.getValidationFunction('headers') : undefined
    if (validateHeaders !== undefined && !validateHeaders(request.headers)) {
      schemaErrors.push(...fieldErrorsOf((validateHeaders.errors ?? []) as never, 'headers'))
    }
    // A field the schema already named is not named again; one set lookup each (thousands of errors are possible).
    const named = new Set(schemaErrors.map(e => `${e.location ?? ''} ${e.pointer}`))
    const domainErrors = checked.ok ? [] : checked.errors.filter(d => !named.has(`${d.location ?? ''} ${d.pointer}`))
    if (schemaErrors.length > 0 || !checked.ok) throw new InvalidRequest([...schemaErrors, ...domainErrors])
    if (body.webhook_url !== undefined) {
      // Registration-time SSRF check (the delivery agent checks again at connect time).
      await checkWebhookTarget(body.webhook_url, config.webhooks).catch((err: Error) => {
        throw err instanceof UnsafeTarget
          ? new InvalidRequest([{ pointer: '/webhook_url', detail: err.message, location: 'body' }])
          : err
      })
    }

    const { task, replayed } = await createTask(createDeps, {
      caller: caller.name,
      checked: checked.value,
      reference: body.reference ?? null,
      metadata: body.metadata ?? null,
      webhookUrl: body.webhook_url ?? null,
      // The headers schema has run: at most one key, a string.
      idempotencyKey: request.headers['idempotency-key'] as string | undefined,
      parkedId: streamed?.id
    })
    if (replayed) reply.header('idempotent-replayed', 'true')
    audit(request.log, 'task.create', caller, 'accepted', { task_id: task.id, kind, replayed })
    return await reply.code(202).header('location', `/v1/videos/${task.id}`).send(toView(task))
  }

  app.get('/:id', {
    schema: {
      tags: ['videos'],
      operationId: 'getVideo',
      summary: 'Get a task',
      description: 'The task as it is now. A caller sees its own tasks; an admin key sees every caller\'s. ' +
        'Prefer SSE (`/v1/videos/{id}/events`) or webhooks to polling.',
      security: [{ bearer: [] }],
      params: TaskParamsSchema,
      response: {
        200: json('the task', TaskRef, taskExample('processing')),
        400: invalid('id'),
        401: unauthorized(),
        404: noTask(),
        500: internal(),
        503: unavailable()
      }
    }
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
      description: 'The caller\'s tasks (an admin key: every caller\'s), newest first, `limit` a page; pass ' +
        '`next_cursor` as `cursor` for the next page (null at the end). `reference` looks up the one task with that ' +
        'reference (for an admin key: none, as references are per caller). `attention=true` lists only tasks held ' +
        'for an operator (an admin key: every caller\'s).',
      security: [{ bearer: [] }],
      querystring: ListQuerySchema,
      response: {
        200: json('a page of tasks', ListSchema, { data: [taskExample('succeeded'), TASK_EXAMPLE], next_cursor: null }),
        400: invalidField('invalid query: every bad parameter is listed', '/limit', 'must be <= 100', 'query'),
        401: unauthorized(),
        500: internal(),
        503: unavailable()
      }
    }
  }, async (request) => {
    const caller = request.caller as Caller
    const { status, reference, limit, cursor, attention } = request.query
    if (attention === true && (status !== undefined || reference !== undefined)) {
      const detail = 'cannot be combined with status or reference (held tasks are all queued)'
      throw new InvalidRequest([{ pointer: '/attention', detail, location: 'query' }])
    }
    if (reference !== undefined && caller.admin && request.query.caller === undefined) {
      // An admin's own name would be a guess: it used to find nothing, silently.
      const detail = 'is required with reference for an admin key: references are per caller, so name whose ' +
        '(e.g. ?caller=svc-a&reference=…)'
      throw new InvalidRequest([{ pointer: '/caller', detail, location: 'query' }])
    }
    // Whose tasks: the one named (any for an admin, only its own for another key), else an admin's everyone's.
    const whose = request.query.caller ?? (caller.admin ? null : caller.name)
    if (whose !== null && whose !== caller.name && !caller.admin) return { data: [], next_cursor: null }
    if (reference !== undefined) {
      // A reference is unique per caller, so this is a lookup, not a scan.
      // `whose` is set here: an admin named a caller (checked above), any other key is its own.
      const task = await store.byReference(whose as string, reference)
      const found = task !== null && (status === undefined || task.status === status) ? [toView(task)] : []
      return { data: found, next_cursor: null }
    }
    const page = await store.list({ caller: whose, status, attention, limit, cursor })
    return { data: page.tasks.map(toView), next_cursor: page.nextCursor }
  })

  app.post('/:id/cancel', {
    schema: {
      tags: ['videos'],
      operationId: 'cancelVideo',
      summary: 'Cancel a task that has not gone upstream yet',
      description: 'Cancels a `queued` task that is not being sent upstream, so nothing is paid for; its images are ' +
        'dropped and a `video.canceled` event follows. Answered once the cancel is durable. Safe to retry: a ' +
        'repeated cancel of a canceled task is 409 `NOT_CANCELABLE` and changes nothing. No body is needed. ' +
        'Another caller\'s task: only with an operator key (an admin key is 403 `OPERATOR_SCOPE_REQUIRED`).',
      security: [{ bearer: [] }],
      params: TaskParamsSchema,
      response: {
        200: json('the task, now `canceled`', TaskRef, taskExample('canceled')),
        ...bodyProblems('1 MiB'),
        400: invalid('id'),
        401: unauthorized(),
        403: operatorScopeRequired('task'),
        404: noTask(),
        409: problem(409, 'the task has left `queued`, or is being submitted upstream right now', {
          code: 'NOT_CANCELABLE', detail: 'the task is processing; only a queued task can be canceled'
        }),
        500: internal(),
        503: unavailable(', or the cancel did not reach enough replicas in time')
      }
    }
  }, async (request) => {
    const caller = request.caller as Caller
    return await audited(request.log, 'task.cancel', caller, { task_id: request.params.id }, async note => {
      const existing = changeable(caller, await store.get(request.params.id), 'task', note)
      return toView(await cancelTask(store, existing))
    })
  })
}
export default videos
