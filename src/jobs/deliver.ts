/**
 * Outbound webhooks (API.md §3): from the event stream to signed HTTP deliveries, at least once.
 *
 * Outbox: the transition script appends every event to the `{prefix}:events` stream in the same atomic step
 * that changes the task, so there is no moment where a state change exists without its event. A consumer group
 * (`webhooks`) reads the stream on every replica; an entry is acknowledged only after its deliveries are stored
 * and queued, and entries left pending by a dead replica are claimed by another (XAUTOCLAIM). A crash right
 * after the callback's 2xx therefore still delivers. Delivery ids derive from (event id, destination), so reading
 * an entry twice makes nothing twice, and an event id is never reused (not even after a Redis rollback reuses a
 * sequence), so a receiver that dedupes by `webhook-id` never drops a new event.
 *
 * Delivery: a BullMQ job per delivery, attempts on WEBHOOK_RETRY_SCHEDULE with ±10 % jitter, Retry-After on 429
 * and 503, a per-attempt timeout, 3xx a failure (never followed), 410 disables the endpoint, five days of
 * failures disable it too. Signed per Standard Webhooks with the `standardwebhooks` library; during a rotation
 * both secrets sign.
 */
import { Queue, Worker, type Job } from 'bullmq'
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import { closeBounded } from './close.ts'
import { Webhook } from 'standardwebhooks'
import { request, type Agent } from 'undici'
import type { Config } from '../config/index.ts'
import type { TaskEvent } from '../domain/task.ts'
import type { RedisClient } from '../infra/redis.ts'
import { createWebhookAgent } from '../notify/ssrf.ts'
import { parseRetryAfter } from '../upstream/client.ts'
import type { TaskStore } from '../store/tasks.ts'
import { WebhookStore, type Delivery } from '../store/webhooks.ts'
import type { StreamEntry } from '../store/event-stream.ts'

export const DELIVER_QUEUE = 'deliver'
const GROUP = 'webhooks'
const FIVE_DAYS_MS = 5 * 24 * 3600_000
const CLAIM_IDLE_MS = 30_000

interface DeliverData { deliveryId: string }

export interface DeliverDeps {
  config: Config
  store: TaskStore
  webhooks: WebhookStore
  logger: Logger
  clock: () => number
  connection?: RedisClient
  /** A connection the stream reader may block on. */
  reader?: RedisClient
  /** Other work that must follow an event durably (the result mirror), run before the entry is acknowledged. */
  onEvent?: (event: TaskEvent) => Promise<void>
}

class DeliveryFailed extends Error {
  constructor (message: string, readonly retryAfterMs: number | null) { super(message) }
}

/** The delay before attempt `attemptsMade + 1` (±10 % jitter), or what the receiver asked for. */
export function retryDelay (schedule: number[], attemptsMade: number, err?: Error): number {
  if (err instanceof DeliveryFailed && err.retryAfterMs !== null) return err.retryAfterMs
  const base = schedule[Math.min(attemptsMade, schedule.length - 1)]
  return Math.round(base * (0.9 + Math.random() * 0.2))
}

export class DeliveryJobs {
  private readonly q?: Queue<DeliverData>
  private worker?: Worker<DeliverData>
  private readonly agent: Agent
  private readonly log: Logger
  private readonly consumer = `c-${randomBytes(6).toString('hex')}`
  private reading?: Promise<void>
  private running = false

  constructor (private readonly deps: DeliverDeps) {
    this.log = deps.logger.child({ component: 'deliver' })
    this.agent = createWebhookAgent({ allowPrivate: deps.config.webhooks.allowPrivate, timeoutMs: deps.config.webhooks.timeoutMs })
    if (deps.connection === undefined) return
    this.q = new Queue<DeliverData>(DELIVER_QUEUE, { connection: deps.connection as never, prefix: deps.store.queuePrefix })
    this.q.on('error', err => this.log.warn({ err: err.message }, 'deliver queue error'))
  }

  private get queue (): Queue<DeliverData> {
    if (this.q === undefined) throw new Error('no queue connection was given')
    return this.q
  }

  /**
   * Makes the consumer group if it is not there. Every replica does this at start, workers or not, so the group
   * exists before the first event is written and no event is ever behind it.
   */
  async ensureGroup (): Promise<void> {
    await this.deps.store.stream.ensureGroup(GROUP)
  }

  async start (): Promise<void> {
    const { store, config } = this.deps
    this.worker = new Worker<DeliverData>(DELIVER_QUEUE, async job => await this.attempt(job), {
      connection: this.deps.connection as never,
      prefix: store.queuePrefix,
      concurrency: 16,
      settings: { backoffStrategy: (attemptsMade, _type, err) => retryDelay(config.webhooks.retryScheduleMs, attemptsMade, err) }
    })
    this.worker.on('error', err => this.log.warn({ err: err.message }, 'deliver worker error'))
    this.running = true
    this.reading = this.readLoop()
  }

  async close (graceMs = 5000): Promise<void> {
    this.running = false
    // A blocking XREADGROUP can outlive a Redis reconnect; disconnecting the reader ends it at once.
    this.deps.reader?.disconnect()
    await this.reading
    await closeBounded(this.worker, this.q, this.log, graceMs)
    await this.agent.close()
  }

  /** Queues a delivery (again): for the first attempt, a manual retry or a recovery. */
  async enqueue (d: Delivery, opts: { retry?: boolean } = {}): Promise<void> {
    const schedule = this.deps.config.webhooks.retryScheduleMs
    await this.queue.add('deliver', { deliveryId: d.id }, {
      jobId: opts.retry === true ? `${d.id}-r${this.deps.clock()}` : d.id,
      delay: opts.retry === true ? 0 : schedule[0],
      attempts: schedule.length,
      backoff: { type: 'custom' },
      removeOnComplete: true,
      removeOnFail: true
    })
  }

  /** Reads the event stream as one consumer of the group, until close(). */
  private async readLoop (): Promise<void> {
    const { stream } = this.deps.store
    const reader = this.deps.reader
    let lastClaim = 0
    while (this.running) {
      try {
        if (this.deps.clock() - lastClaim > CLAIM_IDLE_MS / 3) {
          lastClaim = this.deps.clock()
          await this.handle(await stream.claim(GROUP, this.consumer, CLAIM_IDLE_MS))
        }
        if (reader === undefined) throw new Error('no reader connection was given')
        await this.handle(await stream.read(reader, GROUP, this.consumer, 500))
      } catch (err) {
        if (!this.running) break
        this.log.warn({ err: (err as Error).message }, 'event stream read failed; retrying')
        await new Promise(resolve => setTimeout(resolve, 500))
      }
    }
  }

  private async handle (entries: StreamEntry[]): Promise<void> {
    const { stream } = this.deps.store
    for (const { entryId, event } of entries) {
      if (event !== null) {
        await this.fanOut(event)
        await this.deps.onEvent?.(event)
      }
      await stream.ack(GROUP, entryId)
    }
  }

  /** One delivery per destination that wants this event: the caller's enabled endpoints, and the task's own URL. */
  private async fanOut (event: TaskEvent): Promise<void> {
    const { webhooks } = this.deps
    const payload = JSON.stringify({ type: event.type, timestamp: event.timestamp, data: event.data })
    const destinations: Array<{ endpointId: string | null, url: string }> = []
    for (const ep of await webhooks.listEndpoints(event.caller)) {
      if (ep.enabled && (ep.eventTypes === null || ep.eventTypes.includes(event.type))) destinations.push({ endpointId: ep.id, url: ep.url })
    }
    const taskUrl = event.data.request.webhook_url
    if (typeof taskUrl === 'string') destinations.push({ endpointId: null, url: taskUrl })
    for (const dest of destinations) {
      const id = WebhookStore.deliveryId(event.id, dest.endpointId ?? `url:${dest.url}`)
      const d = await webhooks.ensureDelivery({ id, msgId: `msg_${id}`, caller: event.caller, endpointId: dest.endpointId, url: dest.url, taskId: event.task_id, type: event.type, sequence: event.sequence, payload })
      if (d.status === 'pending') await this.enqueue(d)
    }
  }

  /** One attempt of one delivery. Throws to be retried on the schedule. */
  private async attempt (job: Job<DeliverData>): Promise<string> {
    const { webhooks, clock, config } = this.deps
    const d = await webhooks.getDelivery(job.data.deliveryId)
    if (d === null || d.status !== 'pending') return 'not-pending'
    const ep = d.endpointId === null ? null : await webhooks.getEndpoint(d.endpointId)
    if (d.endpointId !== null && (ep === null || !ep.enabled)) {
      await webhooks.markStatus(d, 'failed', ep === null ? 'endpoint deleted' : `endpoint disabled: ${ep.disabledReason ?? ''}`)
      return 'endpoint-gone'
    }
    const secrets = ep === null ? [await webhooks.callerSecret(d.caller)] : webhooks.signingSecrets(ep)
    const now = new Date(clock())
    const signature = secrets.map(s => new Webhook(s).sign(d.msgId, now, d.payload)).join(' ')
    const started = performance.now()
    let status: number | null = null
    let error: string | null = null
    let wait: number | null = null
    try {
      const res = await request(d.url, {
        method: 'POST',
        dispatcher: this.agent,
        body: d.payload,
        headers: {
          'content-type': 'application/json',
          'user-agent': 'kling-gateway-webhooks/1',
          'webhook-id': d.msgId,
          'webhook-timestamp': String(Math.floor(now.getTime() / 1000)),
          'webhook-signature': signature
        },
        signal: AbortSignal.timeout(config.webhooks.timeoutMs)
      })
      status = res.statusCode
      wait = status === 429 || status === 503 ? parseRetryAfter(res.headers['retry-after']) : null
      await res.body.dump({ limit: 64 * 1024 }).catch(() => {})
      if (status >= 300 && status < 400) error = 'redirects are not followed'
    } catch (err) {
      error = (err as Error).name === 'TimeoutError' ? `timed out after ${config.webhooks.timeoutMs} ms` : (err as Error).message
    }
    const ok = status !== null && status >= 200 && status < 300
    const attempt = { at: now.toISOString(), status_code: status, error, duration_ms: Math.round(performance.now() - started) }
    const last = job.attemptsMade + 1 >= (job.opts.attempts ?? 1)

    if (ok) {
      await webhooks.recordAttempt(d, attempt, 'succeeded')
      if (ep !== null) await webhooks.endpointOutcome(ep, true)
      return 'delivered'
    }
    if (status === 410) {
      // Gone is final: a registered endpoint is disabled; a task's own URL gets no more attempts.
      if (ep !== null) await webhooks.disableEndpoint(ep.id, 'the receiver answered 410 Gone')
      await webhooks.recordAttempt(d, attempt, 'failed')
      return 'gone'
    }
    if (ep !== null) {
      const since = await webhooks.endpointOutcome(ep, false)
      if (since !== null && clock() - since > FIVE_DAYS_MS) await webhooks.disableEndpoint(ep.id, 'failing for more than 5 days')
    }
    await webhooks.recordAttempt(d, attempt, last ? 'failed' : 'pending')
    if (last) return 'failed'
    throw new DeliveryFailed(error ?? `answered ${status}`, wait)
  }
}
