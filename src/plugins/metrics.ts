import fp from 'fastify-plugin'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { FastifyInstance } from 'fastify'
import { TASK_STATUSES } from '../domain/task.ts'
import { ACCOUNT_PROBLEMS, type KlingStatus } from '../upstream/client.ts'
import { internal, unavailable } from '../schemas/common.ts'
import { CallerLimitExceeded } from '../domain/errors.ts'
import { LIMIT_FIELDS } from '../config/callers.ts'
import { roundTrips } from '../infra/redis.ts'

const KLING_STATUSES: KlingStatus[] = ['submitted', 'processing', 'succeed', 'failed']

/** Counters other parts increment as things happen (the rest is read when scraped). */
export interface Counters {
  /** Callbacks whose token verified but whose task is gone, by Kling status (never by task or token). */
  orphanCallbacks: Counter<'status'>
  /** Upstream units charged by creates on this replica, per caller (refunds are not subtracted). */
  callerUnits: Counter<'caller'>
}

declare module 'fastify' {
  interface FastifyInstance { counters: Counters }
}

/**
 * `GET /metrics` (Prometheus text). One registry per app, so tests and several apps in one process never share
 * counters. Request counts and latencies by route; task counts by status, parked bytes, queue depths and open SSE
 * streams are read from Redis and memory when scraped.
 */
export default fp(async function metrics (app: FastifyInstance) {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const { store, hub, queueConnection, pause } = app.deps

  const requests = new Counter({
    name: 'kg_http_requests_total',
    help: 'HTTP requests by route and status',
    labelNames: ['method', 'route', 'status'],
    registers: [registry]
  })
  const latency = new Histogram({
    name: 'kg_http_request_duration_seconds',
    help: 'HTTP request duration by route',
    labelNames: ['method', 'route'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry]
  })
  // Callback style: an async hook costs every request a promise and a tick.
  app.addHook('onResponse', (request, reply, done) => {
    const route = request.routeOptions.url ?? 'unknown'
    requests.inc({ method: request.method, route, status: reply.statusCode })
    latency.observe({ method: request.method, route }, reply.elapsedTime / 1000)
    done()
  })

  const orphanCallbacks = new Counter({
    name: 'kg_orphan_callbacks_total',
    help: 'Callbacks with a valid token whose task no longer exists, by upstream status',
    labelNames: ['status'],
    registers: [registry]
  })
  // Every series exists from the start, so `increase()` sees the first orphan instead of a series appearing.
  for (const status of KLING_STATUSES) orphanCallbacks.inc({ status }, 0)
  const callerUnits = new Counter({
    name: 'kg_caller_units_total',
    help: 'Upstream units (UPSTREAM_UNITS) charged by creates, per caller; units given back by a cancel not subtracted',
    labelNames: ['caller'],
    registers: [registry]
  })
  const refusals = new Counter({
    name: 'kg_caller_limit_refusals_total',
    help: 'Requests refused by a per-caller limit (429 CALLER_LIMIT), per caller and limit',
    labelNames: ['caller', 'limit'],
    registers: [registry]
  })
  // Callers are the configured keys' (a bounded set); their series exist from the start, for `increase()`.
  for (const caller of new Set(app.deps.config.apiKeys.map(k => k.caller))) {
    callerUnits.inc({ caller }, 0)
    for (const limit of Object.keys(LIMIT_FIELDS)) if (limit !== 'weight') refusals.inc({ caller, limit }, 0)
  }
  // Every limit's refusal passes here, whichever route or plugin throws it.
  app.addHook('onError', async (request, _reply, error) => {
    if (!(error instanceof CallerLimitExceeded)) return
    refusals.inc({ caller: request.caller?.name ?? 'unknown', limit: String(error.extensions?.limit ?? 'unknown') })
  })
  app.decorate('counters', { orphanCallbacks, callerUnits })

  // The job families' own queues (closed with them); none without a queue connection.
  const queues = queueConnection === undefined
    ? []
    : [app.deps.jobs, app.deps.reconcile, app.deps.reconcile.confirms, app.deps.deliveries, app.deps.copies]
        .map(j => j.queue)

  new Gauge({ // eslint-disable-line no-new
    name: 'kg_tasks',
    help: 'Tasks by status',
    labelNames: ['status'],
    registers: [registry],
    async collect () {
      const counts = await store.countByStatus()
      for (const s of TASK_STATUSES) this.set({ status: s }, counts[s])
    }
  })
  new Gauge({ // eslint-disable-line no-new
    name: 'kg_parked_bytes',
    help: 'Decoded image bytes waiting for upstream',
    registers: [registry],
    async collect () { this.set(await store.parkedBytes()) }
  })
  new Gauge({ // eslint-disable-line no-new
    name: 'kg_tasks_needing_attention',
    help: 'Tasks held for an operator: a create may have made a paid upstream task that cannot be confirmed',
    registers: [registry],
    async collect () { this.set(await store.countNeedingAttention()) }
  })
  new Gauge({ // eslint-disable-line no-new
    name: 'kg_upstream_paused',
    help: 'Whether the submit queue is paused for an upstream account problem, by reason (1 for the current one)',
    labelNames: ['reason'],
    registers: [registry],
    async collect () {
      const state = await pause.state()
      for (const reason of ACCOUNT_PROBLEMS) this.set({ reason }, state?.reason === reason ? 1 : 0)
    }
  })
  // The fair share (src/jobs/fair.ts): every configured caller has a series, so a caller's line emptying reads 0.
  const callers = [...new Set(app.deps.config.apiKeys.map(k => k.caller))]
  new Gauge({ // eslint-disable-line no-new
    name: 'kg_caller_submit_waiting',
    help: 'Queued tasks waiting in their caller\'s line for a submit slot (fair share), by caller, across replicas',
    labelNames: ['caller'],
    registers: [registry],
    async collect () {
      const waiting = queueConnection === undefined ? {} : await app.deps.jobs.fair.waiting()
      for (const caller of new Set([...callers, ...Object.keys(waiting)])) this.set({ caller }, waiting[caller] ?? 0)
    }
  })
  new Counter({ // eslint-disable-line no-new
    name: 'kg_caller_submits_total',
    help: 'Tasks this replica released into the submit queue (given a slot by the fair share), by caller',
    labelNames: ['caller'],
    registers: [registry],
    collect () {
      const released = app.deps.jobs.fair.released
      this.reset()
      for (const caller of new Set([...callers, ...released.keys()])) this.inc({ caller }, released.get(caller) ?? 0)
    }
  })
  new Counter({ // eslint-disable-line no-new
    name: 'kg_redis_round_trips_total',
    help: 'Redis round trips this replica sent, by connection (a pipeline or auto-pipelined batch is one)',
    labelNames: ['connection'],
    registers: [registry],
    collect () {
      this.reset()
      this.inc({ connection: 'command' }, roundTrips(app.deps.redis))
      if (queueConnection !== undefined) this.inc({ connection: 'worker' }, roundTrips(queueConnection))
    }
  })
  new Gauge({ // eslint-disable-line no-new
    name: 'kg_sse_streams',
    help: 'Open SSE streams on this replica',
    registers: [registry],
    collect () { this.set(hub.listening) }
  })
  new Gauge({ // eslint-disable-line no-new
    name: 'kg_queue_jobs',
    help: 'BullMQ jobs by queue and state',
    labelNames: ['queue', 'state'],
    registers: [registry],
    async collect () {
      for (const q of queues) {
        const counts = await q.getJobCounts('waiting', 'active', 'delayed', 'failed')
        for (const [state, n] of Object.entries(counts)) this.set({ queue: q.name, state }, n)
      }
    }
  })

  app.get('/metrics', {
    schema: {
      tags: ['health'],
      operationId: 'metrics',
      summary: 'Prometheus metrics',
      description: 'Request counts and latencies, tasks by status, tasks held for an operator, parked bytes, ' +
        'queue depths, the account pause, SSE streams and orphaned callbacks, in the Prometheus text format. No API ' +
        'key: expose it to the scraper only.',
      response: {
        200: {
          description: 'Prometheus text format',
          content: {
            'text/plain': {
              schema: { type: 'string' },
              example: '# HELP kg_tasks Tasks by status\n# TYPE kg_tasks gauge\nkg_tasks{status="queued"} 3\n'
            }
          }
        },
        500: internal(),
        503: unavailable()
      }
    }
  }, async (_request, reply) => {
    return await reply.type(registry.contentType).send(await registry.metrics())
  })
}, { name: 'metrics' })
