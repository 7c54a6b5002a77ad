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
 * Delivery: attempts on WEBHOOK_RETRY_SCHEDULE with ±10 % jitter, Retry-After on 429 and 503, a per-attempt
 * timeout, 3xx a failure (never followed), 410 disables the endpoint, five days of failures disable it too. Signed
 * per Standard Webhooks with the `standardwebhooks` library; during a rotation both secrets sign.
 *
 * First attempt inline: the fan-out stores every delivery, then makes its first attempt in this process, to every
 * destination at once (at most INLINE_MAX in flight per process, past that they go to the queue as before), and
 * waits for it up to INLINE_WAIT_MS. A BullMQ job is made only for what needs another attempt: one that failed
 * (queued before the failure is recorded, so a `retrying` delivery always has its job), or one still in flight at
 * INLINE_WAIT_MS (a takeover job due after the attempt's own timeout, moved to the retry time if the attempt then
 * fails, and a no-op if it succeeded). The stream entry is acknowledged only after that, so a crash mid-attempt
 * leaves it unacknowledged: it is read again (claimed after CLAIM_IDLE_MS) and the stored `pending` delivery is
 * attempted again, with the same `webhook-id`. Before, every delivery was a BullMQ job (~10 Redis commands of
 * queue bookkeeping per attempt and a worker hop): a webhook took seconds under load.
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
import { WebhookStore, type Delivery, type Endpoint } from '../store/webhooks.ts'

export const DELIVER_QUEUE = 'deliver'
const FIVE_DAYS_MS = 5 * 24 * 3600_000
/** How long the fan-out waits for an inline first attempt before it hands the delivery to a takeover job. */
export const INLINE_WAIT_MS = 1000
/** Inline first attempts in flight at once in this process; past it a delivery is queued as a job at once. */
const INLINE_MAX = 128
/** A takeover job is due this long after the inline attempt's own timeout, so it never races a live attempt. */
const TAKEOVER_MARGIN_MS = 1000

/** `before`: attempts made before this job (the inline first attempt), so the schedule goes on where it left. */
interface DeliverData { deliveryId: string, before?: number }

/** What one attempt leaves: finished (delivered, or given up), or another attempt due after `delayMs`. */
type Outcome = { done: string } | { retry: string, delayMs: number }

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
  /** Inline first attempts in flight (bounded by INLINE_MAX). */
  private inline = 0

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

  /**
   * Queues a delivery (again): a manual retry or a recovery (`retry`, a fresh schedule, at once), or the attempts
   * after `before` attempts made (the inline first one), the next due in `delayMs`. The job id is the delivery's, so
   * a fan-out read twice, or a takeover and a failed attempt queueing at once, make one job.
   */
  async enqueue (d: Delivery, opts: { retry?: boolean, before?: number, delayMs?: number } = {}): Promise<Job> {
    const schedule = this.deps.config.webhooks.retryScheduleMs
    const before = opts.retry === true ? 0 : opts.before ?? 0
    return await this.queue.add('deliver', { deliveryId: d.id, before }, {
      jobId: opts.retry === true ? `${d.id}-r${this.deps.clock()}` : d.id,
      delay: opts.retry === true ? 0 : opts.delayMs ?? schedule[0],
      attempts: Math.max(1, schedule.length - before),
      backoff: { type: 'custom' },
      removeOnComplete: true,
      removeOnFail: true
    })
  }

  /**
   * The `webhooks` reader of the event stream: one delivery per destination that wants this event (the caller's
   * enabled endpoints, and the task's own URL), stored, then attempted inline or queued, before the entry is
   * acknowledged.
   */
  async fanOut (event: TaskEvent): Promise<void> {
    const { webhooks } = this.deps
    const payload = JSON.stringify({ type: event.type, timestamp: event.timestamp, data: event.data })
    // Page by page (WebhookStore.endpointPages): every endpoint is reached, however many the caller has, and one
    // page's deliveries are settled before the next is read, so memory stays bounded.
    for await (const page of webhooks.endpointPages(event.caller)) {
      const wanted = page.filter(ep => ep.enabled && (ep.eventTypes === null || ep.eventTypes.includes(event.type)))
      await Promise.all(wanted.map(async ep =>
        await this.deliver(event, payload, { endpointId: ep.id, url: ep.url }, ep)))
    }
    const taskUrl = event.data.request.webhook_url
    if (typeof taskUrl === 'string') await this.deliver(event, payload, { endpointId: null, url: taskUrl }, null)
  }

  /**
   * Makes one destination's delivery of an event (again: the same record) and, while it is pending, makes its first
   * attempt inline, or queues it: inline attempts are at INLINE_MAX, or the endpoint is failing already (its
   * attempts would wait INLINE_WAIT_MS each for nothing).
   */
  private async deliver (event: TaskEvent, payload: string, dest: { endpointId: string | null, url: string },
    ep: Endpoint | null): Promise<void> {
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
    if (d.status !== 'pending') return
    if (this.inline >= INLINE_MAX || ep?.failingSince != null || this.deps.config.webhooks.retryScheduleMs[0] > 0) {
      await this.enqueue(d)
      return
    }
    await this.inlineFirst(d, ep)
  }

  /**
   * The first attempt, in this process; returns once it is finished or its next attempt is durably queued, at most
   * INLINE_WAIT_MS (plus the queueing) after it started.
   */
  private async inlineFirst (d: Delivery, ep: Endpoint | null): Promise<void> {
    const started = performance.now()
    const handoff: { takeover?: Promise<Job> } = {}
    this.inline++
    const attempt = this.attemptOnce(d, ep, 0, async delayMs => {
      // Queued before the attempt is recorded as `retrying`. If the takeover is queued already, this add is a no-op
      // (same job id) and the takeover is moved to the retry time instead.
      await this.enqueue(d, { before: 1, delayMs })
      if (handoff.takeover !== undefined) await (await handoff.takeover).changeDelay(delayMs).catch(() => {})
    }).finally(() => { this.inline-- })
    let timer: NodeJS.Timeout | undefined
    const slow = new Promise<'slow'>(resolve => { timer = setTimeout(() => resolve('slow'), INLINE_WAIT_MS) })
    const first = await Promise.race([attempt, slow])
    clearTimeout(timer)
    if (first !== 'slow') return
    // Still in flight: a job takes over after the attempt's own timeout, unless the attempt settles it first.
    const due = started + this.deps.config.webhooks.timeoutMs + TAKEOVER_MARGIN_MS - performance.now()
    handoff.takeover = this.enqueue(d, { before: 1, delayMs: Math.max(0, Math.round(due)) })
    await handoff.takeover
    attempt.catch((err: Error) => { this.log.warn({ deliveryId: d.id, err: err.message }, 'inline attempt failed') })
  }

  /** One attempt of a queued delivery. Throws to be retried on the schedule. */
  private async attempt (job: Job<DeliverData>): Promise<string> {
    const { webhooks } = this.deps
    const d = await webhooks.getDelivery(job.data.deliveryId)
    if (d === null || (d.status !== 'pending' && d.status !== 'retrying')) return 'not-pending'
    const ep = d.endpointId === null ? null : await webhooks.getEndpoint(d.endpointId)
    const outcome = await this.attemptOnce(d, ep, (job.data.before ?? 0) + job.attemptsMade)
    if ('done' in outcome) return outcome.done
    // The delay is chosen in attemptOnce, not in the backoff strategy, so `next_attempt_at` is the time BullMQ will
    // use: the strategy returns an error's retryAfterMs as it is.
    throw new DeliveryFailed(outcome.retry, outcome.delayMs)
  }

  /**
   * Attempt `index` (0 = the first) of a delivery, recorded. When another is due, `scheduleNext` (the inline
   * attempt's) queues it before the delivery is recorded `retrying`; a job's next attempt is its own retry.
   */
  private async attemptOnce (d: Delivery, ep: Endpoint | null, index: number,
    scheduleNext?: (delayMs: number) => Promise<void>): Promise<Outcome> {
    const { webhooks, clock, config } = this.deps
    if (d.endpointId !== null && (ep === null || !ep.enabled)) {
      const reason = ep === null ? 'endpoint deleted' : `endpoint disabled: ${ep.disabledReason ?? ''}`
      await webhooks.markStatus(d, 'failed', reason)
      return { done: 'endpoint-gone' }
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
    const last = index + 1 >= config.webhooks.retryScheduleMs.length

    if (ok) {
      await webhooks.recordAttempt(d, attempt, 'succeeded')
      if (ep !== null) await webhooks.endpointOutcome(ep, true)
      return { done: 'delivered' }
    }
    if (status === 410) {
      // Gone is final: a registered endpoint is disabled; a task's own URL gets no more attempts.
      if (ep !== null) await webhooks.disableEndpoint(ep.id, 'the receiver answered 410 Gone')
      await webhooks.recordAttempt(d, attempt, 'failed')
      return { done: 'gone' }
    }
    if (ep !== null) {
      const since = await webhooks.endpointOutcome(ep, false)
      if (since !== null && clock() - since > FIVE_DAYS_MS) {
        await webhooks.disableEndpoint(ep.id, 'failing for more than 5 days')
      }
    }
    if (last) {
      await webhooks.recordAttempt(d, attempt, 'failed')
      return { done: 'failed' }
    }
    const delay = retryDelay(config.webhooks.retryScheduleMs, index + 1, new DeliveryFailed('', wait))
    if (scheduleNext !== undefined) await scheduleNext(delay)
    await webhooks.recordAttempt(d, attempt, 'retrying', clock() + delay)
    return { retry: error ?? `answered ${status}`, delayMs: delay }
  }
}
