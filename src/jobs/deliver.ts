/**
 * Outbound webhooks (docs/API.md, "Webhooks"): from the event stream to signed HTTP deliveries, at least once.
 *
 * Outbox: the task scripts append every event to the `{prefix}:events` stream in the same atomic step that
 * changes the task, so there is no moment where a state change exists without its event. The `webhooks` reader
 * of the stream (src/events) hands each event to `fanOut` and acknowledges it only after its deliveries are
 * stored and queued. A crash right after the callback's 2xx therefore still delivers. Delivery ids derive from
 * (event id, destination), so reading an entry twice makes nothing twice, and an event id is never reused (not even
 * after a Redis rollback reuses a sequence), so a receiver that dedupes by `webhook-id` never drops a new event.
 *
 * Delivery: a BullMQ job per delivery, attempts on WEBHOOK_RETRY_SCHEDULE with ±10 % jitter, Retry-After on 429
 * and 503, a per-attempt timeout, 3xx a failure (never followed), 410 disables the endpoint, five days of
 * failures disable it too. Signed per Standard Webhooks with the `standardwebhooks` library; during a rotation
 * both secrets sign.
 */
import type { Job } from 'bullmq'
import type { Logger } from 'pino'
import { QueueJobs } from './base.ts'
import { Webhook } from 'standardwebhooks'
import { request, type Agent } from 'undici'
import type { Config } from '../config/index.ts'
import type { TaskEvent } from '../domain/task.ts'
import type { RedisClient } from '../infra/redis.ts'
import { CANNOT_USE, checkWebhookUrl, createGuardedAgent, UnsafeTarget } from '../notify/ssrf.ts'
import { parseRetryAfter } from '../upstream/client.ts'
import type { TaskStore } from '../store/tasks.ts'
import { WebhookStore, type Delivery } from '../store/webhooks.ts'

export const DELIVER_QUEUE = 'deliver'
const FIVE_DAYS_MS = 5 * 24 * 3600_000

interface DeliverData { deliveryId: string }

export interface DeliverDeps {
  config: Config
  store: TaskStore
  webhooks: WebhookStore
  logger: Logger
  clock: () => number
  connection?: RedisClient
}

class DeliveryFailed extends Error {
  constructor (message: string, readonly retryAfterMs: number | null) { super(message) }
}

/** A target the SSRF guard refused, whether undici passes its error on as it is or as the cause of its own. */
const isRefused = (err: unknown): boolean =>
  err instanceof UnsafeTarget || (err instanceof Error && err.cause instanceof UnsafeTarget)

/** The delay before attempt `attemptsMade + 1` (±10 % jitter), or what the receiver asked for. */
export function retryDelay (schedule: number[], attemptsMade: number, err?: Error): number {
  if (err instanceof DeliveryFailed && err.retryAfterMs !== null) return err.retryAfterMs
  const base = schedule[Math.min(attemptsMade, schedule.length - 1)]
  return Math.round(base * (0.9 + Math.random() * 0.2))
}

export class DeliveryJobs extends QueueJobs<DeliverData> {
  private readonly agent: Agent

  constructor (private readonly deps: DeliverDeps) {
    super(DELIVER_QUEUE, { connection: deps.connection, prefix: deps.store.queuePrefix, logger: deps.logger })
    this.agent = createGuardedAgent({
      allowPrivate: deps.config.webhooks.allowPrivate,
      timeoutMs: deps.config.webhooks.timeoutMs
    })
  }

  async start (): Promise<void> {
    const { config } = this.deps
    this.startWorker(async job => await this.attempt(job), {
      concurrency: 16,
      settings: {
        backoffStrategy: (attemptsMade, _type, err) => retryDelay(config.webhooks.retryScheduleMs, attemptsMade, err)
      }
    })
  }

  protected override async closed (): Promise<void> {
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

  /**
   * The `webhooks` reader of the event stream: one delivery per destination that wants this event (the caller's
   * enabled endpoints, and the task's own URL), stored and queued before the entry is acknowledged.
   */
  async fanOut (event: TaskEvent): Promise<void> {
    const { webhooks } = this.deps
    const payload = JSON.stringify({ type: event.type, timestamp: event.timestamp, data: event.data })
    // Page by page (WebhookStore.endpointPages): every endpoint is reached, however many the caller has, and one
    // page's deliveries are stored and queued before the next is read, so memory stays bounded.
    for await (const page of webhooks.endpointPages(event.caller)) {
      const wanted = page.filter(ep => ep.enabled && (ep.eventTypes === null || ep.eventTypes.includes(event.type)))
      for (const ep of wanted) await this.deliver(event, payload, { endpointId: ep.id, url: ep.url })
    }
    const taskUrl = event.data.request.webhook_url
    if (typeof taskUrl === 'string') await this.deliver(event, payload, { endpointId: null, url: taskUrl })
  }

  /** Makes one destination's delivery of an event (again: the same record) and queues it while pending. */
  private async deliver (event: TaskEvent, payload: string, dest: { endpointId: string | null, url: string }):
  Promise<void> {
    const { webhooks } = this.deps
    const id = WebhookStore.deliveryId(event.id, dest.endpointId ?? `url:${dest.url}`)
    const d = await webhooks.ensureDelivery({
      id,
      msgId: `msg_${id}`,
      caller: event.caller,
      endpointId: dest.endpointId,
      url: dest.url,
      taskId: event.task_id,
      type: event.type,
      sequence: event.sequence,
      payload,
      nextAttemptAt: this.deps.clock() + this.deps.config.webhooks.retryScheduleMs[0]
    })
    if (d.status === 'pending') await this.enqueue(d)
  }

  /** One attempt of one delivery. Throws to be retried on the schedule. */
  private async attempt (job: Job<DeliverData>): Promise<string> {
    const { webhooks, clock, config } = this.deps
    const d = await webhooks.getDelivery(job.data.deliveryId)
    if (d === null || (d.status !== 'pending' && d.status !== 'retrying')) return 'not-pending'
    const ep = d.endpointId === null ? null : await webhooks.getEndpoint(d.endpointId)
    if (d.endpointId !== null && (ep === null || !ep.enabled)) {
      const reason = ep === null ? 'endpoint deleted' : `endpoint disabled: ${ep.disabledReason ?? ''}`
      await webhooks.markStatus(d, 'failed', reason)
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
      // The same check and message as at registration: a target allowed then (WEBHOOK_ALLOW_PRIVATE, another port
      // list) and not now is refused with the one message that names the settings.
      checkWebhookUrl(d.url, config.webhooks)
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
      error = (err as Error).name === 'TimeoutError'
        ? `timed out after ${config.webhooks.timeoutMs} ms`
        : isRefused(err) ? CANNOT_USE : (err as Error).message
    }
    const ok = status !== null && status >= 200 && status < 300
    const attempt = {
      at: now.toISOString(), status_code: status, error, duration_ms: Math.round(performance.now() - started)
    }
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
      if (since !== null && clock() - since > FIVE_DAYS_MS) {
        await webhooks.disableEndpoint(ep.id, 'failing for more than 5 days')
      }
    }
    if (last) {
      await webhooks.recordAttempt(d, attempt, 'failed')
      return 'failed'
    }
    // The delay is chosen here, not in the backoff strategy, so `next_attempt_at` is the time BullMQ will use: the
    // strategy returns an error's retryAfterMs as it is. BullMQ counts this attempt before asking for the delay.
    const delay = retryDelay(config.webhooks.retryScheduleMs, job.attemptsMade + 1, new DeliveryFailed('', wait))
    await webhooks.recordAttempt(d, attempt, 'retrying', clock() + delay)
    throw new DeliveryFailed(error ?? `answered ${status}`, delay)
  }
}
