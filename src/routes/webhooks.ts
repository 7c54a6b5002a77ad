import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { GatewayError, InvalidRequest, NotFound } from '../domain/errors.ts'
import { limitsFor } from '../config/callers.ts'
import { ENDPOINTS_RETRY_AFTER_S, refusal } from '../services/limits.ts'
import { callerLimitProblem } from '../schemas/limits.ts'
import { EVENT_TYPES } from '../domain/task.ts'
import { CANNOT_USE, checkWebhookTarget, UnsafeTarget } from '../notify/ssrf.ts'
import { canSee, type Caller } from '../plugins/auth.ts'
import { audit, audited, changeable, type AuditFields } from '../plugins/audit.ts'
import {
  bodyProblems, internal, invalidField, json, operatorScopeRequired, problem, unauthorized, unavailable
} from '../schemas/common.ts'
import { DELIVERY_EXAMPLE, ENDPOINT_EXAMPLE, SECRET_EXAMPLE } from '../schemas/examples.ts'
import { DELIVERY_STATUSES, type Attempt, type Delivery, type Endpoint } from '../store/webhooks.ts'

const EndpointSchema = Type.Object({
  id: Type.String(),
  url: Type.String(),
  event_types: Type.Union([Type.Array(Type.String()), Type.Null()]),
  description: Type.Union([Type.String(), Type.Null()]),
  enabled: Type.Boolean(),
  disabled_reason: Type.Union([Type.String(), Type.Null()]),
  created_at: Type.String({ format: 'date-time' }),
  secret: Type.Optional(Type.String({
    description: 'whsec_…: shown only when the endpoint is created or its secret rotated'
  }))
}, { $id: 'WebhookEndpoint' })

const DeliverySchema = Type.Object({
  id: Type.String(),
  webhook_id: Type.String({ description: 'the webhook-id header: the same on every attempt' }),
  endpoint_id: Type.Union([Type.String(), Type.Null()], { description: 'null for the task\'s own webhook_url' }),
  url: Type.String(),
  task_id: Type.String(),
  type: Type.String(),
  sequence: Type.Integer(),
  status: Type.Union(DELIVERY_STATUSES.map(s => Type.Literal(s)), {
    description: '`pending`: queued, not attempted since; `retrying`: an attempt failed and another is scheduled; ' +
      '`failed`: given up (attempts used up, 410, endpoint gone); `succeeded`: the receiver answered 2xx'
  }),
  next_attempt_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()], {
    description: 'when the next attempt is due while `pending` or `retrying`; null once finished (and on records ' +
      'made before this field existed)'
  }),
  attempts: Type.Array(Type.Object({
    at: Type.String(),
    status_code: Type.Union([Type.Integer(), Type.Null()]),
    error: Type.Union([Type.String(), Type.Null()]),
    duration_ms: Type.Integer()
  })),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' })
}, { $id: 'Delivery' })

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' }) })
const invalidId = () => invalidField('invalid id, or a body that is not valid: every bad field is listed',
  '/id', 'must match pattern "^[A-Za-z0-9_-]+$"', 'params')
const noEndpoint = () => problem(404, 'no such endpoint for this caller', { detail: 'webhook endpoint not found' })
const withSecret = { ...ENDPOINT_EXAMPLE, secret: SECRET_EXAMPLE }

/** What a change of one endpoint (delete, rotate-secret, recover) can answer besides its success. */
const endpointChangeProblems = () => ({
  ...bodyProblems('1 MiB'),
  400: invalidId(),
  401: unauthorized(),
  403: operatorScopeRequired('webhook endpoint'),
  404: noEndpoint(),
  500: internal(),
  503: unavailable()
})

function endpointView (ep: Endpoint, withSecret = false) {
  return {
    id: ep.id,
    url: ep.url,
    event_types: ep.eventTypes,
    description: ep.description,
    enabled: ep.enabled,
    disabled_reason: ep.disabledReason,
    created_at: new Date(ep.createdAt).toISOString(),
    ...(withSecret && { secret: ep.secret })
  }
}

/** Webhook endpoints and deliveries (docs/API.md, "Routes"). A caller sees only its own; an admin every caller's. */
const webhooks: FastifyPluginAsyncTypebox = async (app) => {
  const { webhooks: store, deliveries, config } = app.deps
  app.addSchema(EndpointSchema)
  app.addSchema(DeliverySchema)
  app.addHook('onRequest', app.authenticate)

  const ownEndpoint = async (id: string, caller: Caller): Promise<Endpoint> => {
    const ep = await store.getEndpoint(id)
    if (!canSee(caller, ep)) throw new NotFound('webhook endpoint')
    return ep
  }
  /** An endpoint to change: the caller's own, or any for an operator (403 for an admin without the scope). */
  const changeableEndpoint = async (id: string, caller: Caller, note: (more: AuditFields) => void) =>
    changeable(caller, await store.getEndpoint(id), 'webhook endpoint', note)
  const deliveryView = async (read: Delivery) => {
    const { delivery: d, attempts } = await store.withAttempts(read)
    return deliveryBody(d, attempts)
  }
  const deliveryBody = (d: Delivery, attempts: Attempt[]) => ({
    id: d.id,
    webhook_id: d.msgId,
    endpoint_id: d.endpointId,
    url: d.url,
    task_id: d.taskId,
    type: d.type,
    sequence: d.sequence,
    status: d.status,
    next_attempt_at: d.nextAttemptAt === null ? null : new Date(d.nextAttemptAt).toISOString(),
    attempts,
    created_at: new Date(d.createdAt).toISOString(),
    updated_at: new Date(d.updatedAt).toISOString()
  })

  app.post('/webhook-endpoints', {
    schema: {
      tags: ['webhooks'],
      operationId: 'createWebhookEndpoint',
      summary: 'Register a webhook endpoint',
      description: 'Registers an https URL to receive the caller\'s task events (`event_types`, or all of them), ' +
        'signed per Standard Webhooks (see the document\'s `webhooks`). The answer holds the endpoint\'s `secret` ' +
        '(`whsec_…`), shown only here and on rotation. Targets on private, loopback, link-local or metadata ' +
        'addresses are refused (400). Not idempotent: each call makes an endpoint.',
      security: [{ bearer: [] }],
      body: Type.Object({
        url: Type.String({ format: 'uri', maxLength: 2048 }),
        event_types: Type.Optional(Type.Array(
          Type.Union(EVENT_TYPES.map(t => Type.Literal(t))),
          { minItems: 1, maxItems: EVENT_TYPES.length, uniqueItems: true }
        )),
        description: Type.Optional(Type.String({ maxLength: 500 }))
      }, {
        additionalProperties: false,
        examples: [{ url: ENDPOINT_EXAMPLE.url, event_types: ['video.succeeded', 'video.failed'] }]
      }),
      response: {
        201: json('the endpoint, with its secret', Type.Ref('WebhookEndpoint'), withSecret),
        ...bodyProblems('1 MiB'),
        400: invalidField('invalid body, or a URL the gateway refuses to call', '/url', CANNOT_USE, 'body'),
        401: unauthorized(),
        429: callerLimitProblem('the caller already has max_webhook_endpoints endpoints ' +
          '(CALLER_MAX_WEBHOOK_ENDPOINTS, CALLER_LIMITS); delete one first', 'max_webhook_endpoints', 20),
        500: internal(),
        503: unavailable()
      }
    }
  }, async (request, reply) => {
    const caller = request.caller as Caller
    try {
      await checkWebhookTarget(request.body.url, config.webhooks)
    } catch (err) {
      if (err instanceof UnsafeTarget) {
        throw new InvalidRequest([{ pointer: '/url', detail: err.message, location: 'body' }])
      }
      throw err
    }
    const limits = limitsFor(config.callers, caller.name)
    const ep = await store.createEndpoint({
      caller: caller.name,
      url: request.body.url,
      eventTypes: request.body.event_types ?? null,
      description: request.body.description ?? null
    }, limits.maxWebhookEndpoints)
    if (ep === null) throw refusal(limits, 'max_webhook_endpoints', ENDPOINTS_RETRY_AFTER_S)
    audit(request.log, 'endpoint.create', caller, 'ok', { endpoint_id: ep.id })
    return await reply.code(201).send(endpointView(ep, true))
  })

  app.get('/webhook-endpoints', {
    schema: {
      tags: ['webhooks'],
      operationId: 'listWebhookEndpoints',
      summary: 'List the caller\'s webhook endpoints',
      description: 'Every endpoint of the caller, without secrets; `enabled: false` with `disabled_reason` for one ' +
        'the gateway disabled (410, or five days of failures).',
      security: [{ bearer: [] }],
      response: {
        200: json('the endpoints', Type.Object({ data: Type.Array(Type.Ref('WebhookEndpoint')) }),
          { data: [ENDPOINT_EXAMPLE] }),
        401: unauthorized(),
        500: internal(),
        503: unavailable()
      }
    }
  }, async (request) => {
    const endpoints = await store.listEndpoints((request.caller as Caller).name)
    return { data: endpoints.map(ep => endpointView(ep)) }
  })

  app.delete('/webhook-endpoints/:id', {
    schema: {
      tags: ['webhooks'],
      operationId: 'deleteWebhookEndpoint',
      summary: 'Delete a webhook endpoint',
      description: 'Removes the endpoint; its pending deliveries fail as `endpoint deleted`. A second delete is 404.',
      security: [{ bearer: [] }],
      params: IdParams,
      response: {
        204: Type.Null({ description: 'deleted' }),
        ...endpointChangeProblems()
      }
    }
  }, async (request, reply) => {
    const caller = request.caller as Caller
    await audited(request.log, 'endpoint.delete', caller, { endpoint_id: request.params.id }, async note => {
      await store.deleteEndpoint(await changeableEndpoint(request.params.id, caller, note))
    })
    return await reply.code(204).send(null)
  })

  app.post('/webhook-endpoints/:id/rotate-secret', {
    schema: {
      tags: ['webhooks'],
      operationId: 'rotateWebhookSecret',
      summary: 'A new secret; the old one keeps signing beside it for 24 h',
      description: 'Makes a new `whsec_…` secret and answers it (shown only here). For 24 h deliveries carry two ' +
        'signatures, old and new, so receivers can switch without dropping any. Each call rotates again.',
      security: [{ bearer: [] }],
      params: IdParams,
      response: {
        200: json('the endpoint, with its new secret', Type.Ref('WebhookEndpoint'), withSecret),
        ...endpointChangeProblems()
      }
    }
  }, async (request) => {
    const caller = request.caller as Caller
    // The new secret is in the answer only; the audit line names the endpoint.
    return await audited(request.log, 'endpoint.rotate_secret', caller, { endpoint_id: request.params.id },
      async note => endpointView(await store.rotateSecret(await changeableEndpoint(request.params.id, caller, note)),
        true))
  })

  app.post('/webhook-endpoints/:id/recover', {
    schema: {
      tags: ['webhooks'],
      operationId: 'recoverWebhookEndpoint',
      summary: 'Queue again every failed delivery of this endpoint since a time',
      description: 'Queues a new attempt of each failed delivery of the endpoint made since `since` (at most ' +
        '10,000), after the receiver was fixed. Repeating it queues them again: receivers dedupe on `webhook-id`.',
      security: [{ bearer: [] }],
      params: IdParams,
      body: Type.Object({ since: Type.String({ format: 'date-time', maxLength: 64 }) }, {
        additionalProperties: false, examples: [{ since: '2026-11-24T00:00:00Z' }]
      }),
      response: {
        202: json('how many deliveries were queued again', Type.Object({ recovered: Type.Integer() }),
          { recovered: 3 }),
        ...endpointChangeProblems()
      }
    }
  }, async (request, reply) => {
    const caller = request.caller as Caller
    const fields = { endpoint_id: request.params.id, since: request.body.since }
    const recovered = await audited(request.log, 'endpoint.recover', caller, fields, async note => {
      const ep = await changeableEndpoint(request.params.id, caller, note)
      const failed = await store.listDeliveries(store.dlvIndex({ endpoint: ep.id }, 'failed'), {
        limit: 10_000,
        since: Date.parse(request.body.since)
      })
      for (const d of failed) {
        await store.reopen(d)
        await deliveries.enqueue(d, { retry: true })
      }
      note({ recovered: failed.length })
      return failed.length
    })
    return await reply.code(202).send({ recovered })
  })

  app.get('/webhook-secret', {
    schema: {
      tags: ['webhooks'],
      operationId: 'getTaskWebhookSecret',
      summary: 'The secret that signs deliveries to tasks\' own webhook_url (one per caller)',
      description: 'Deliveries to a task\'s `webhook_url` are signed with this secret (made on first use, the same ' +
        'on every call). Registered endpoints have their own.',
      security: [{ bearer: [] }],
      response: {
        200: json('the caller\'s secret', Type.Object({ secret: Type.String() }), { secret: SECRET_EXAMPLE }),
        401: unauthorized(),
        500: internal(),
        503: unavailable()
      }
    }
  }, async (request) => ({ secret: await store.callerSecret((request.caller as Caller).name) }))

  app.get('/deliveries', {
    schema: {
      tags: ['webhooks'],
      operationId: 'listDeliveries',
      summary: 'List webhook deliveries and their attempts, newest first',
      description: 'The caller\'s deliveries (an admin key: everyone\'s), or one endpoint\'s (`endpoint`); ' +
        '`status=` one of `pending`, `retrying`, `failed`, `succeeded` for those in that state (each an index of its ' +
        'own), newest to enter it first. Page with `before` in ms: the `created_at` of the last one, or with ' +
        '`status` its `updated_at`.',
      security: [{ bearer: [] }],
      querystring: Type.Object({
        status: Type.Optional(Type.Union(DELIVERY_STATUSES.map(s => Type.Literal(s)))),
        endpoint: Type.Optional(Type.String({ maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' })),
        limit: Type.Integer({ minimum: 1, maximum: 100, default: 50 }),
        before: Type.Optional(Type.Integer({
          minimum: 0,
          description: 'ms since the epoch: only deliveries made (with `status`: that entered it) before it (paging)'
        }))
      }, { additionalProperties: false }),
      response: {
        200: json('the deliveries', Type.Object({ data: Type.Array(Type.Ref('Delivery')) }),
          { data: [DELIVERY_EXAMPLE] }),
        400: invalidField('invalid query', '/status', 'must be one of: "pending", "retrying", "failed", "succeeded"',
          'query'),
        401: unauthorized(),
        404: noEndpoint(),
        500: internal(),
        503: unavailable()
      }
    }
  }, async (request) => {
    const caller = request.caller as Caller
    const { status, endpoint, limit, before } = request.query
    const scope = endpoint !== undefined
      ? { endpoint: (await ownEndpoint(endpoint, caller)).id }
      : caller.admin ? 'all' as const : { caller: caller.name }
    const list = await store.listDeliveries(store.dlvIndex(scope, status ?? 'all'), { limit, before })
    return { data: await Promise.all(list.map(deliveryView)) }
  })

  app.post('/deliveries/:id/retry', {
    schema: {
      tags: ['webhooks'],
      operationId: 'retryDelivery',
      summary: 'Attempt a finished delivery again',
      description: 'Queues one more attempt of a delivery that succeeded or failed (same `webhook-id`, so receivers ' +
        'dedupe it). 409 while it is still being attempted (`pending` or `retrying`).',
      security: [{ bearer: [] }],
      params: IdParams,
      response: {
        202: json('the delivery, `pending` again', Type.Ref('Delivery'),
          { ...DELIVERY_EXAMPLE, status: 'pending', next_attempt_at: DELIVERY_EXAMPLE.updated_at }),
        ...bodyProblems('1 MiB'),
        400: invalidId(),
        401: unauthorized(),
        403: operatorScopeRequired('delivery'),
        404: problem(404, 'no such delivery for this caller', { detail: 'delivery not found' }),
        409: problem(409, 'the delivery is still pending', {
          code: 'DELIVERY_PENDING', detail: 'the delivery is still being attempted'
        }),
        500: internal(),
        503: unavailable()
      }
    }
  }, async (request, reply) => {
    const caller = request.caller as Caller
    const fields = { delivery_id: request.params.id }
    const view = await audited(request.log, 'delivery.retry', caller, fields, async note => {
      const d = changeable(caller, await store.getDelivery(request.params.id), 'delivery', note)
      note({ task_id: d.taskId, endpoint_id: d.endpointId })
      if (d.status === 'pending' || d.status === 'retrying') {
        throw new GatewayError('DELIVERY_PENDING', 409, 'the delivery is still being attempted')
      }
      await store.reopen(d)
      await deliveries.enqueue(d, { retry: true })
      // As the retry left it (a job may attempt it at once): pending, due now.
      return deliveryBody({ ...d, status: 'pending', nextAttemptAt: app.deps.clock() }, await store.attempts(d.id))
    })
    return await reply.code(202).send(view)
  })
}
export default webhooks
