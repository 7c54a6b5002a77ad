import Fastify, { type FastifyBaseLogger, type FastifyInstance, type RawServerDefault } from 'fastify'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { Logger } from 'pino'
import { randomUUID } from 'node:crypto'
import type { Config } from './config/index.ts'
import { duplicate, replicasToAck, type RedisClient } from './infra/redis.ts'
import errors, { clientErrorHandler, frameworkErrors, MAX_PARAM_LENGTH } from './plugins/errors.ts'
import docs from './plugins/swagger.ts'
import routes from './routes/index.ts'
import auth from './plugins/auth.ts'
import browser from './plugins/browser.ts'
import metrics from './plugins/metrics.ts'
import { schemaController } from './plugins/validation.ts'
import { TaskStore } from './store/tasks.ts'
import { keys } from './store/keys.ts'
import { SubmitJobs } from './jobs/submit.ts'
import { ReconcileJobs } from './jobs/reconcile.ts'
import { EventHub } from './notify/hub.ts'
import { DeliveryJobs } from './jobs/deliver.ts'
import { WebhookStore } from './store/webhooks.ts'
import { CopyJobs } from './jobs/copy.ts'
import { EventPipeline } from './events/pipeline.ts'
import type { BlobStore } from './blobs/index.ts'
import type { UpstreamAdapter } from './upstream/adapter.ts'
import { newLifecycle, type Lifecycle } from './lifecycle.ts'
import { ReplicaRegistry } from './store/replicas.ts'
import { OrphanStore } from './store/orphans.ts'
import { PauseStore } from './store/pause.ts'
import { FairStore } from './store/fair.ts'
import { UpstreamPause } from './jobs/pause.ts'
import { RetentionJobs } from './jobs/retention.ts'
import { LimitStore } from './store/limits.ts'
import { logConnectionState } from './infra/redis-log.ts'
import { quietRoutes } from './infra/request-logs.ts'

/** Everything the app needs from outside; whoever creates a client closes it (docs/DESIGN.md, "Rules of the house"). */
export interface AppDeps {
  config: Config
  /** Request-path Redis connection (fails fast). */
  redis: RedisClient
  logger: Logger
  clock: () => number
  ids: () => string
  upstream: UpstreamAdapter
  /** A connection BullMQ may block on; without it no queue or worker is made (OpenAPI generation). */
  queueConnection?: RedisClient
  /** Run this replica's workers (default true when there is a queue connection). */
  workers?: boolean
  /** Where result videos are kept. */
  blobs: BlobStore
  /** Draining and faults, as readiness reports them; server.ts flips `draining` on SIGTERM. */
  lifecycle: Lifecycle
}

/** What routes and plugins reach through `app.deps`: the injected deps plus the parts built from them. */
export interface AppContext extends AppDeps {
  store: TaskStore
  jobs: SubmitJobs
  reconcile: ReconcileJobs
  hub: EventHub
  webhooks: WebhookStore
  deliveries: DeliveryJobs
  copies: CopyJobs
  events: EventPipeline
  replicas: ReplicaRegistry
  orphans: OrphanStore
  /** The submit queue's pause for account problems (key, balance), shared by every replica. */
  pause: UpstreamPause
  /** Removes finished tasks after TASK_RETENTION_DAYS. */
  retention: RetentionJobs
  /** Per-caller counters beside task state: the create token bucket and the usage of each UTC day. */
  limitStore: LimitStore
}

declare module 'fastify' {
  interface FastifyInstance { deps: AppContext }
}

/** The app with the TypeBox type provider, as buildApp returns it. */
export type App = FastifyInstance<
  RawServerDefault, IncomingMessage, ServerResponse, FastifyBaseLogger, TypeBoxTypeProvider
>

export const SMALL_BODY_LIMIT = 1024 * 1024

/** Builds the un-listened app. server.ts listens; tests inject or listen on port 0. */
export async function buildApp (input: Omit<AppDeps, 'clock' | 'ids' | 'lifecycle'> & Partial<AppDeps>): Promise<App> {
  const base: AppDeps = { clock: Date.now, ids: randomUUID, lifecycle: newLifecycle(), ...input }
  // WAIT runs on a connection of its own: it blocks that connection until the replicas answer.
  const replicasAcked = await replicasToAck(base.redis, base.config.redis.minReplicasAcked)
  const durableConnection = replicasAcked > 0 ? duplicate(base.redis) : undefined
  if (durableConnection !== undefined) logConnectionState(durableConnection, base.logger, 'redis (durability)')
  const store = new TaskStore(base.redis, base.config.prefix, base.clock, {
    connection: durableConnection,
    rule: { replicas: replicasAcked, timeoutMs: base.config.redis.ackTimeoutMs }
  })
  if (base.config.redis.minReplicasAcked === 'auto') {
    base.logger.info(
      { replicas: replicasAcked },
      'a write counts once every replica holds it (REDIS_MIN_REPLICAS_ACKED=auto)'
    )
  }
  const jobDeps = { config: base.config, logger: base.logger, clock: base.clock, connection: base.queueConnection }
  const pause = new UpstreamPause({
    store: new PauseStore(base.redis, keys(base.config.prefix)),
    upstream: base.upstream,
    config: base.config,
    logger: base.logger,
    clock: base.clock
  })
  const fair = new FairStore(base.redis, keys(base.config.prefix))
  const jobs = new SubmitJobs({ ...jobDeps, store, upstream: base.upstream, pause, fair })
  const reconcile = new ReconcileJobs({ ...jobDeps, store, upstream: base.upstream, submit: jobs, pause })
  const hub = new EventHub()
  const webhooks = new WebhookStore(base.redis, keys(base.config.prefix), base.clock)
  const copies = new CopyJobs({ ...jobDeps, store, blobs: base.blobs })
  const deliveries = new DeliveryJobs({ ...jobDeps, store, webhooks })
  const retention = new RetentionJobs({ ...jobDeps, store, webhooks, blobs: base.blobs })
  // Every reader of the event stream, in one place; each gets a blocking connection of its own (made lazily, so
  // inert deps never connect) that it disconnects when it stops.
  const events = new EventPipeline({
    stream: store.stream,
    connect: () => {
      const c = duplicate(base.queueConnection ?? base.redis)
      logConnectionState(c, base.logger, 'redis (event reader)')
      return c
    },
    logger: base.logger,
    clock: base.clock,
    webhooks: async e => { await deliveries.fanOut(e) },
    copy: async e => { await copies.onEvent(e) },
    live: e => { hub.dispatch(e) },
    liveResumed: () => { hub.resumed() }
  })
  const k = keys(base.config.prefix)
  const orphans = new OrphanStore(base.redis, k, base.clock)
  const replicas = new ReplicaRegistry({
    redis: base.redis,
    k,
    id: base.ids(),
    logger: base.logger,
    lifecycle: base.lifecycle,
    clock: base.clock
  })
  const limitStore = new LimitStore(base.redis, k)
  const deps: AppContext = {
    ...base,
    store,
    jobs,
    reconcile,
    hub,
    webhooks,
    deliveries,
    copies,
    events,
    replicas,
    orphans,
    pause,
    retention,
    limitStore
  }
  const app = Fastify({
    loggerInstance: deps.logger as FastifyBaseLogger,
    bodyLimit: SMALL_BODY_LIMIT,
    // Node's own deadline for any request to arrive; never cuts a create before CREATE_BODY_TIMEOUT_MS does.
    requestTimeout: Math.max(120_000, base.config.create.bodyTimeoutMs),
    return503OnClosing: false,
    genReqId: () => deps.ids(),
    // `/v1/videos` and `/v1/videos/` are one route (the document lists the first; callers send either).
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: MAX_PARAM_LENGTH },
    // Router and HTTP-parser refusals answer problem+json too (src/plugins/errors.ts).
    frameworkErrors,
    clientErrorHandler,
    schemaController
  }).withTypeProvider<TypeBoxTypeProvider>()

  app.decorate('deps', deps)
  // Before any route: health probes, metrics scrapes and static assets log no line per request.
  quietRoutes(app, base.config.logLevel)
  if (deps.queueConnection !== undefined) {
    // First, before any worker runs: a replica that would serve content from another blob directory than its live
    // peers must not start at all (BlobDirConflict).
    await replicas.start(await deps.blobs.identity())
    await events.ensureGroups()
    events.start({ groups: deps.workers !== false })
  }
  if (deps.queueConnection !== undefined && deps.workers !== false) {
    await jobs.start()
    await reconcile.start()
    await deliveries.start()
    await copies.start()
    await retention.start()
  }
  app.addHook('onClose', async () => {
    // Readers first: nothing new is queued while the workers finish.
    await events.stop()
    hub.close()
    await Promise.all([jobs.close(), reconcile.close(), deliveries.close(), copies.close(), replicas.close(),
      retention.close()])
    if (durableConnection !== undefined) await durableConnection.quit().catch(() => durableConnection.disconnect())
  })
  await app.register(errors)
  await app.register(auth)
  await app.register(browser)
  await app.register(metrics)
  await app.register(docs)
  await app.register(routes)
  return app
}
