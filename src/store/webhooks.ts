/**
 * Webhook endpoints and deliveries in Redis. An endpoint belongs to one caller; its secret (`whsec_…`) signs
 * every delivery, and after a rotation the previous secret signs beside it for 24 h. A delivery is one event
 * for one destination: its id is derived from (event id, destination), so making it twice — after a crash, or
 * on two replicas — yields the same record and the same BullMQ job. Its `webhook-id` is `msg_<delivery id>`.
 */
import { createHash, randomBytes } from 'node:crypto'
import type { Result } from 'ioredis'
import type { RedisClient } from '../infra/redis.ts'
import type { DeliveryScope, DeliveryStatus, Keys } from './keys.ts'
import { pack, script } from './tasks.ts'

declare module 'ioredis' {
  interface RedisCommander<Context> {
    kgEndpoint: (endpoint: string, index: string, args: Buffer) => Result<number, Context>
    kgDelivery: (...args: Array<string | Buffer>) => Result<number, Context>
    kgDeliveryStatus: (...args: Array<string | Buffer>) => Result<number, Context>
  }
}

export const ROTATION_OVERLAP_MS = 24 * 3600_000

export interface Endpoint {
  id: string
  caller: string
  url: string
  eventTypes: string[] | null
  description: string | null
  secret: string
  previousSecret: string | null
  previousSecretExpiresAt: number | null
  enabled: boolean
  disabledReason: string | null
  failingSince: number | null
  createdAt: number
}

export interface Attempt { at: string, status_code: number | null, error: string | null, duration_ms: number }

export interface Delivery {
  id: string
  msgId: string
  caller: string
  /** An endpoint id, or null for the task's own `webhook_url`. */
  endpointId: string | null
  url: string
  taskId: string
  type: string
  sequence: number
  /** The exact bytes sent on every attempt. */
  payload: string
  /**
   * pending: queued, no attempt made since it was (re)queued; retrying: an attempt failed and another is scheduled;
   * failed: gave up (attempts used up, 410, endpoint gone); succeeded: the receiver answered 2xx.
   */
  status: DeliveryStatus
  /** When the next attempt is due (ms), while pending or retrying; null once finished. */
  nextAttemptAt: number | null
  attempts: number
  lastStatusCode: number | null
  lastError: string | null
  createdAt: number
  updatedAt: number
}

export const DELIVERY_STATUSES: readonly DeliveryStatus[] = ['pending', 'retrying', 'failed', 'succeeded']

export const newSecret = (): string => `whsec_${randomBytes(32).toString('base64')}`

const num = (s: string | undefined): number | null => s === undefined || s === '' ? null : Number(s)
const str = (s: string | undefined): string | null => s === undefined || s === '' ? null : s

function decodeEndpoint (h: Record<string, string>): Endpoint | null {
  if (h.id === undefined) return null
  return {
    id: h.id,
    caller: h.caller,
    url: h.url,
    eventTypes: h.event_types === '' || h.event_types === undefined ? null : JSON.parse(h.event_types) as string[],
    description: str(h.description),
    secret: h.secret,
    previousSecret: str(h.previous_secret),
    previousSecretExpiresAt: num(h.previous_secret_expires_at),
    enabled: h.enabled === '1',
    disabledReason: str(h.disabled_reason),
    failingSince: num(h.failing_since),
    createdAt: Number(h.created_at)
  }
}

const decodeAttempts = (raw: string[]): Attempt[] => raw.map(a => JSON.parse(a) as Attempt)

function decodeDelivery (h: Record<string, string>): Delivery | null {
  if (h.id === undefined) return null
  return {
    id: h.id,
    msgId: h.msg_id,
    caller: h.caller,
    endpointId: str(h.endpoint_id),
    url: h.url,
    taskId: h.task_id,
    type: h.type,
    sequence: Number(h.sequence),
    payload: h.payload,
    status: h.status as Delivery['status'],
    // Records written before next_attempt_at existed have none: null, not a made-up time.
    nextAttemptAt: num(h.next_attempt_at),
    attempts: Number(h.attempts ?? 0),
    lastStatusCode: num(h.last_status_code),
    lastError: str(h.last_error),
    createdAt: Number(h.created_at),
    updatedAt: Number(h.updated_at)
  }
}

/** Endpoints read per step of a fan-out (ZSCAN COUNT): bounds one step's memory and Redis time, whatever the total. */
export const FAN_OUT_PAGE = 200
/** A fan-out reads at most this many pages (FAN_OUT_PAGE × this endpoints), then fails loudly to be retried. */
const FAN_OUT_MAX_PAGES = 10_000

export class WebhookStore {
  constructor (readonly redis: RedisClient, readonly k: Keys, private readonly clock: () => number = Date.now) {
    redis.defineCommand('kgEndpoint', script('endpoint-2'))
    redis.defineCommand('kgDelivery', script('delivery-8'))
    redis.defineCommand('kgDeliveryStatus', script('delivery-14'))
  }

  private epKey (id: string) { return this.k.endpoint(id) }
  private epIndex (caller: string) { return this.k.endpoints(caller) }
  private dlvKey (id: string) { return this.k.delivery(id) }
  private dlvAttempts (id: string) { return this.k.deliveryAttempts(id) }
  /** Deliveries newest first: all, per caller, per endpoint or to task URLs; by status, by when they entered it. */
  dlvIndex (scope: DeliveryScope, status: 'all' | DeliveryStatus = 'all') { return this.k.deliveries(scope, status) }

  /**
   * Sets a delivery's status (and records `attempt`, if any) with `fields`, and moves it from the index of the
   * status its record held into `status`'s, in each scope, in one script (delivery-14.lua), so a delivery is always
   * listed under exactly the status its record holds, whatever a concurrent change did to it.
   */
  private async setStatus (d: Pick<Delivery, 'id' | 'caller' | 'endpointId'>, status: DeliveryStatus, at: number,
    fields: Record<string, string>, attempt?: Attempt): Promise<void> {
    const indexes = this.scopesOf(d).flatMap(scope => DELIVERY_STATUSES.map(s => this.dlvIndex(scope, s)))
    await this.redis.kgDeliveryStatus(this.dlvKey(d.id), this.dlvAttempts(d.id), ...indexes, pack({
      id: d.id,
      status,
      at,
      fields: { ...fields, status },
      ...(attempt !== undefined && { attempt: JSON.stringify(attempt) }),
      statuses: DELIVERY_STATUSES
    }))
  }

  /** The indexes a delivery is listed in. */
  private scopesOf (d: Pick<Delivery, 'caller' | 'endpointId'>): DeliveryScope[] {
    return [{ caller: d.caller }, 'all', d.endpointId === null ? 'task-url' : { endpoint: d.endpointId }]
  }

  private callerSecretKey (caller: string) { return this.k.callerSecret(caller) }

  /**
   * Registers an endpoint unless its caller already has `max` of them (0 = no limit; endpoint-2.lua counts and
   * writes in one step); null when refused.
   */
  async createEndpoint (
    input: { caller: string, url: string, eventTypes: string[] | null, description: string | null }, max = 0
  ): Promise<Endpoint | null> {
    const ep: Endpoint = {
      id: `ep_${randomBytes(12).toString('hex')}`,
      ...input,
      secret: newSecret(),
      previousSecret: null,
      previousSecretExpiresAt: null,
      enabled: true,
      disabledReason: null,
      failingSince: null,
      createdAt: this.clock()
    }
    const registered = await this.redis.kgEndpoint(this.epKey(ep.id), this.epIndex(ep.caller), pack({
      id: ep.id,
      created_at: String(ep.createdAt),
      max: String(max),
      fields: {
        id: ep.id,
        caller: ep.caller,
        url: ep.url,
        event_types: ep.eventTypes === null ? '' : JSON.stringify(ep.eventTypes),
        description: ep.description ?? '',
        secret: ep.secret,
        enabled: '1',
        created_at: String(ep.createdAt)
      }
    }))
    return registered === 1 ? ep : null
  }

  /** How many endpoints the caller has registered (what max_webhook_endpoints counts). */
  async countEndpoints (caller: string): Promise<number> {
    return await this.redis.zcard(this.epIndex(caller))
  }

  /**
   * Every endpoint of the caller, a page at a time, for the fan-out of one event. ZSCAN returns every endpoint
   * that exists from the first page to the last at least once, however many there are and whatever is added or
   * deleted meanwhile (a walk by rank would skip one past a delete); an id seen twice is yielded once.
   */
  async * endpointPages (caller: string): AsyncGenerator<Endpoint[]> {
    const seen = new Set<string>()
    let cursor = '0'
    for (let page = 0; page < FAN_OUT_MAX_PAGES; page++) {
      const [next, flat] = await this.redis.zscan(this.epIndex(caller), cursor, 'COUNT', FAN_OUT_PAGE)
      const ids: string[] = []
      for (let i = 0; i < flat.length; i += 2) if (!seen.has(flat[i])) { seen.add(flat[i]); ids.push(flat[i]) }
      const eps = await Promise.all(ids.map(async id => await this.getEndpoint(id)))
      yield eps.filter((e): e is Endpoint => e !== null)
      if (next === '0') return
      cursor = next
    }
    throw new Error(`webhook fan-out: more than ${FAN_OUT_MAX_PAGES} pages of endpoints`)
  }

  async getEndpoint (id: string): Promise<Endpoint | null> {
    return decodeEndpoint(await this.redis.hgetall(this.epKey(id)))
  }

  async listEndpoints (caller: string): Promise<Endpoint[]> {
    const ids = await this.redis.zrange(this.epIndex(caller), '0', '999')
    return (await Promise.all(ids.map(async id => await this.getEndpoint(id)))).filter((e): e is Endpoint => e !== null)
  }

  async deleteEndpoint (ep: Endpoint): Promise<void> {
    await this.redis.multi().del(this.epKey(ep.id)).zrem(this.epIndex(ep.caller), ep.id).exec()
  }

  /** A new secret; the current one keeps signing beside it for ROTATION_OVERLAP_MS. */
  async rotateSecret (ep: Endpoint): Promise<Endpoint> {
    const secret = newSecret()
    const expires = this.clock() + ROTATION_OVERLAP_MS
    await this.redis.hset(this.epKey(ep.id), {
      secret, previous_secret: ep.secret, previous_secret_expires_at: String(expires)
    })
    return { ...ep, secret, previousSecret: ep.secret, previousSecretExpiresAt: expires }
  }

  /** The secrets that sign now: the current one, and the previous one while its overlap lasts. */
  signingSecrets (ep: Endpoint): string[] {
    const now = this.clock()
    return ep.previousSecret !== null && (ep.previousSecretExpiresAt ?? 0) > now
      ? [ep.secret, ep.previousSecret]
      : [ep.secret]
  }

  async disableEndpoint (id: string, reason: string): Promise<void> {
    await this.redis.hset(this.epKey(id), { enabled: '0', disabled_reason: reason })
  }

  /** Records that an endpoint answered well (clears its failure streak) or badly (starts one). */
  async endpointOutcome (ep: Endpoint, ok: boolean): Promise<number | null> {
    if (ok) {
      if (ep.failingSince !== null) await this.redis.hset(this.epKey(ep.id), 'failing_since', '')
      return null
    }
    if (ep.failingSince !== null) return ep.failingSince
    const now = this.clock()
    await this.redis.hsetnx(this.epKey(ep.id), 'failing_since', String(now))
    return num(await this.redis.hget(this.epKey(ep.id), 'failing_since') ?? undefined) ?? now
  }

  /** The secret that signs deliveries to tasks' own `webhook_url`, one per caller, made on first use. */
  async callerSecret (caller: string): Promise<string> {
    await this.redis.setnx(this.callerSecretKey(caller), newSecret())
    return await this.redis.get(this.callerSecretKey(caller)) as string
  }

  /** One delivery per (event, destination); event ids never repeat, so neither do delivery ids. */
  static deliveryId (eventId: string, destination: string): string {
    return createHash('sha256').update(`${eventId}\n${destination}`).digest('base64url').slice(0, 24)
  }

  /**
   * Makes the delivery if it is not there yet, in one step with its index entries (delivery-8.lua); returns it
   * either way (a new one without reading it back).
   */
  async ensureDelivery (
    d: Omit<Delivery, 'status' | 'attempts' | 'lastStatusCode' | 'lastError' | 'createdAt' | 'updatedAt'>
  ): Promise<Delivery> {
    const now = this.clock()
    const scopes = this.scopesOf(d)
    const made = await this.redis.kgDelivery(
      this.dlvKey(d.id),
      ...scopes.map(scope => this.dlvIndex(scope)),
      ...scopes.map(scope => this.dlvIndex(scope, 'pending')),
      this.k.taskDeliveries(d.taskId),
      pack({
        id: d.id,
        now: String(now),
        fields: {
          msg_id: d.msgId,
          caller: d.caller,
          endpoint_id: d.endpointId ?? '',
          url: d.url,
          task_id: d.taskId,
          type: d.type,
          sequence: String(d.sequence),
          payload: d.payload,
          status: 'pending',
          next_attempt_at: d.nextAttemptAt === null ? '' : String(d.nextAttemptAt),
          attempts: '0',
          created_at: String(now),
          updated_at: String(now)
        }
      }))
    if (made === 1) {
      return {
        ...d, status: 'pending', attempts: 0, lastStatusCode: null, lastError: null, createdAt: now, updatedAt: now
      }
    }
    return await this.getDelivery(d.id) as Delivery
  }

  async getDelivery (id: string): Promise<Delivery | null> {
    return decodeDelivery(await this.redis.hgetall(this.dlvKey(id)))
  }

  /**
   * An attempt and the state it leaves (delivery-14.lua, one step): `retrying` needs when the next attempt is due
   * (ms). A delivery deleted meanwhile stays deleted.
   */
  async recordAttempt (d: Delivery, attempt: Attempt, status: Delivery['status'], nextAttemptAt: number | null = null):
  Promise<void> {
    const now = this.clock()
    await this.setStatus(d, status, now, {
      next_attempt_at: nextAttemptAt === null ? '' : String(nextAttemptAt),
      last_status_code: attempt.status_code === null ? '' : String(attempt.status_code),
      last_error: attempt.error ?? '',
      updated_at: String(now)
    }, attempt)
  }

  async markStatus (d: Delivery, status: Delivery['status'], error: string | null): Promise<void> {
    await this.recordAttempt(d, {
      at: new Date(this.clock()).toISOString(), status_code: null, error, duration_ms: 0
    }, status)
  }

  /** Back to pending for a manual retry, due at once; the attempts so far stay recorded. */
  async reopen (d: Delivery): Promise<void> {
    const now = this.clock()
    await this.setStatus(d, 'pending', now, { next_attempt_at: String(now), updated_at: String(now) })
  }

  async attempts (id: string): Promise<Attempt[]> {
    return decodeAttempts(await this.redis.lrange(this.dlvAttempts(id), 0, -1))
  }

  /**
   * A delivery as it is now with its attempts, read in one MULTI: read apart, an attempt recorded in between showed
   * a delivery still `pending` beside its attempt. `d` is what the caller read before (kept if it is gone now).
   */
  async withAttempts (d: Delivery): Promise<{ delivery: Delivery, attempts: Attempt[] }> {
    const res = await this.redis.multi().hgetall(this.dlvKey(d.id)).lrange(this.dlvAttempts(d.id), 0, -1).exec()
    const [[hashErr, hash], [listErr, list]] = res ?? [[null, {}], [null, []]]
    if (hashErr !== null) throw hashErr
    if (listErr !== null) throw listErr
    const delivery = decodeDelivery(hash as Record<string, string>) ?? d
    return { delivery, attempts: decodeAttempts(list as string[]) }
  }

  /**
   * Deletes up to `limit` of a task's deliveries (retention), each with its attempts and index entries in one
   * MULTI, so no index names a missing delivery; the task's set of them shrinks with them. Returns how many are left.
   */
  async forgetTaskDeliveries (taskId: string, limit = 100): Promise<number> {
    const set = this.k.taskDeliveries(taskId)
    const ids = await this.redis.srandmember(set, limit)
    for (const id of ids) {
      const [caller, endpointId] = await this.redis.hmget(this.dlvKey(id), 'caller', 'endpoint_id')
      const multi = this.redis.multi().del(this.dlvKey(id), this.dlvAttempts(id)).srem(set, id)
      // A delivery whose hash is gone already (a second sweep) is still taken off the task's set.
      if (caller !== null) {
        const endpoint = endpointId === null || endpointId === '' ? null : endpointId
        for (const scope of this.scopesOf({ caller, endpointId: endpoint })) {
          multi.zrem(this.dlvIndex(scope), id)
          for (const status of DELIVERY_STATUSES) multi.zrem(this.dlvIndex(scope, status), id)
        }
      }
      await multi.exec()
    }
    return await this.redis.scard(set)
  }

  /** Newest first from an index; `since` (ms) bounds it from below. */
  async listDeliveries (index: string, opts: { limit: number, before?: number, since?: number }): Promise<Delivery[]> {
    const max = opts.before === undefined ? '+inf' : `(${opts.before}`
    const ids = await this.redis.zrevrangebyscore(index, max, opts.since ?? '-inf', 'LIMIT', 0, opts.limit)
    return (await Promise.all(ids.map(async id => await this.getDelivery(id)))).filter((d): d is Delivery => d !== null)
  }
}
