import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { GatewayError, InvalidRequest, NotFound } from '../domain/errors.ts'
import { EVENT_TYPES } from '../domain/task.ts'
import { checkWebhookTarget, UnsafeTarget } from '../notify/ssrf.ts'
import { canSee, type Caller } from '../plugins/auth.ts'
import { problem } from '../schemas/common.ts'
import type { Delivery, Endpoint } from '../store/webhooks.ts'

const EndpointSchema = Type.Object({
  id: Type.String(),
  url: Type.String(),
  event_types: Type.Union([Type.Array(Type.String()), Type.Null()]),
  description: Type.Union([Type.String(), Type.Null()]),
  enabled: Type.Boolean(),
  disabled_reason: Type.Union([Type.String(), Type.Null()]),
  created_at: Type.String({ format: 'date-time' }),
  secret: Type.Optional(Type.String({ description: 'whsec_…: shown only when the endpoint is created or its secret rotated' }))
}, { $id: 'WebhookEndpoint' })

const DeliverySchema = Type.Object({
  id: Type.String(),
  webhook_id: Type.String({ description: 'the webhook-id header: the same on every attempt' }),
  endpoint_id: Type.Union([Type.String(), Type.Null()], { description: 'null for the task\'s own webhook_url' }),
  url: Type.String(),
  task_id: Type.String(),
  type: Type.String(),
  sequence: Type.Integer(),
  status: Type.Union([Type.Literal('pending'), Type.Literal('succeeded'), Type.Literal('failed')]),
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
const errors = { 400: problem('invalid request'), 401: problem('missing or unknown API key'), 404: problem('not found for this caller') }

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
  const deliveryView = async (d: Delivery) => ({
    id: d.id,
    webhook_id: d.msgId,
    endpoint_id: d.endpointId,
    url: d.url,
    task_id: d.taskId,
    type: d.type,
    sequence: d.sequence,
    status: d.status,
    attempts: await store.attempts(d.id),
    created_at: new Date(d.createdAt).toISOString(),
    updated_at: new Date(d.updatedAt).toISOString()
  })

  app.post('/webhook-endpoints', {
    schema: {
      tags: ['webhooks'],
      operationId: 'createWebhookEndpoint',
      security: [{ bearer: [] }],
      body: Type.Object({
        url: Type.String({ format: 'uri', maxLength: 2048 }),
        event_types: Type.Optional(Type.Array(Type.Union(EVENT_TYPES.map(t => Type.Literal(t))), { minItems: 1, maxItems: EVENT_TYPES.length, uniqueItems: true })),
        description: Type.Optional(Type.String({ maxLength: 500 }))
      }, { additionalProperties: false }),
      response: { 201: Type.Ref('WebhookEndpoint'), ...errors }
    }
  }, async (request, reply) => {
    const caller = request.caller as Caller
    try {
      await checkWebhookTarget(request.body.url, { allowPrivate: config.webhooks.allowPrivate })
    } catch (err) {
      if (err instanceof UnsafeTarget) throw new InvalidRequest([{ pointer: '/url', detail: err.message, location: 'body' }])
      throw err
    }
    const ep = await store.createEndpoint({ caller: caller.name, url: request.body.url, eventTypes: request.body.event_types ?? null, description: request.body.description ?? null })
    return await reply.code(201).send(endpointView(ep, true))
  })

  app.get('/webhook-endpoints', {
    schema: { tags: ['webhooks'], operationId: 'listWebhookEndpoints', security: [{ bearer: [] }], response: { 200: Type.Object({ data: Type.Array(Type.Ref('WebhookEndpoint')) }), ...errors } }
  }, async (request) => ({ data: (await store.listEndpoints((request.caller as Caller).name)).map(ep => endpointView(ep)) }))

  app.delete('/webhook-endpoints/:id', {
    schema: { tags: ['webhooks'], operationId: 'deleteWebhookEndpoint', security: [{ bearer: [] }], params: IdParams, response: { 204: Type.Null(), ...errors } }
  }, async (request, reply) => {
    await store.deleteEndpoint(await ownEndpoint(request.params.id, request.caller as Caller))
    return await reply.code(204).send(null)
  })

  app.post('/webhook-endpoints/:id/rotate-secret', {
    schema: {
      tags: ['webhooks'],
      operationId: 'rotateWebhookSecret',
      summary: 'A new secret; the old one keeps signing beside it for 24 h',
      security: [{ bearer: [] }],
      params: IdParams,
      response: { 200: Type.Ref('WebhookEndpoint'), ...errors }
    }
  }, async (request) => endpointView(await store.rotateSecret(await ownEndpoint(request.params.id, request.caller as Caller)), true))

  app.post('/webhook-endpoints/:id/recover', {
    schema: {
      tags: ['webhooks'],
      operationId: 'recoverWebhookEndpoint',
      summary: 'Queue again every failed delivery of this endpoint since a time',
      security: [{ bearer: [] }],
      params: IdParams,
      body: Type.Object({ since: Type.String({ format: 'date-time', maxLength: 64 }) }, { additionalProperties: false }),
      response: { 202: Type.Object({ recovered: Type.Integer() }), ...errors }
    }
  }, async (request, reply) => {
    const ep = await ownEndpoint(request.params.id, request.caller as Caller)
    const failed = await store.listDeliveries(store.dlvIndex(ep.id, 'failed'), { limit: 10_000, since: Date.parse(request.body.since) })
    for (const d of failed) {
      await store.reopen(d)
      await deliveries.enqueue(d, { retry: true })
    }
    return await reply.code(202).send({ recovered: failed.length })
  })

  app.get('/webhook-secret', {
    schema: {
      tags: ['webhooks'],
      operationId: 'getTaskWebhookSecret',
      summary: 'The secret that signs deliveries to tasks\' own webhook_url (one per caller)',
      security: [{ bearer: [] }],
      response: { 200: Type.Object({ secret: Type.String() }), ...errors }
    }
  }, async (request) => ({ secret: await store.callerSecret((request.caller as Caller).name) }))

  app.get('/deliveries', {
    schema: {
      tags: ['webhooks'],
      operationId: 'listDeliveries',
      security: [{ bearer: [] }],
      querystring: Type.Object({
        status: Type.Optional(Type.Union([Type.Literal('failed')])),
        endpoint: Type.Optional(Type.String({ maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' })),
        limit: Type.Integer({ minimum: 1, maximum: 100, default: 50 }),
        before: Type.Optional(Type.Integer({ minimum: 0, description: 'ms since the epoch: only deliveries made before it (paging)' }))
      }, { additionalProperties: false }),
      response: { 200: Type.Object({ data: Type.Array(Type.Ref('Delivery')) }), ...errors }
    }
  }, async (request) => {
    const caller = request.caller as Caller
    const { status, endpoint, limit, before } = request.query
    const scope = endpoint !== undefined ? (await ownEndpoint(endpoint, caller)).id : caller.admin ? '*' : caller.name
    const list = await store.listDeliveries(store.dlvIndex(scope, status ?? 'all'), { limit, before })
    return { data: await Promise.all(list.map(deliveryView)) }
  })

  app.post('/deliveries/:id/retry', {
    schema: { tags: ['webhooks'], operationId: 'retryDelivery', security: [{ bearer: [] }], params: IdParams, response: { 202: Type.Ref('Delivery'), ...errors, 409: problem('the delivery is still pending') } }
  }, async (request, reply) => {
    const caller = request.caller as Caller
    const d = await store.getDelivery(request.params.id)
    if (!canSee(caller, d)) throw new NotFound('delivery')
    if (d.status === 'pending') throw new GatewayError('DELIVERY_PENDING', 409, 'the delivery is still being attempted')
    await store.reopen(d)
    await deliveries.enqueue(d, { retry: true })
    return await reply.code(202).send(await deliveryView({ ...d, status: 'pending' }))
  })
}
export default webhooks
