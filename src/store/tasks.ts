import { readFileSync } from 'node:fs'
import type { Redis, Cluster, Result } from 'ioredis'
import { isTerminal, toView, type EventType, type TaskEvent, type TaskRecord, type TaskStatus } from '../domain/task.ts'
import { keys, type Keys } from './keys.ts'

type RedisClient = Redis | Cluster
const lua = (name: string) => readFileSync(new URL(`./lua/${name}.lua`, import.meta.url), 'utf8')
const STREAM_MAXLEN = '100000'
const IDEMPOTENCY_TTL_MS = 24 * 3600_000
const IDEMPOTENCY_PENDING_MS = 120_000

declare module 'ioredis' {
  interface RedisCommander<Context> {
    kgCreate: (...args: Array<string | number>) => Result<[string, string], Context>
    kgTransition: (...args: Array<string | number>) => Result<number, Context>
  }
}

/** The change a caller wants; `fields` are written as they are (JSON fields already serialized). */
export interface Change {
  to: TaskStatus
  upstream?: TaskRecord['upstream']
  result?: TaskRecord['result']
  error?: TaskRecord['error']
  submitSentAt?: number | null
  extra?: Record<string, string>
}

export type TransitionOutcome =
  | { applied: true, task: TaskRecord, event: TaskEvent | null }
  | { applied: false, reason: 'missing' | 'not-allowed' | 'guarded', task: TaskRecord | null }

export type IdempotencyState =
  | { state: 'new' }
  | { state: 'pending', fingerprint: string }
  | { state: 'done', fingerprint: string, status: number, body: unknown }

const json = (v: unknown) => v === null || v === undefined ? '' : JSON.stringify(v)
const parse = <T>(s: string | undefined): T | null => s === undefined || s === '' ? null : JSON.parse(s) as T

function decode (h: Record<string, string>): TaskRecord | null {
  if (h.id === undefined) return null
  return {
    id: h.id,
    caller: h.caller,
    status: h.status as TaskStatus,
    createdAt: Number(h.created_at),
    updatedAt: Number(h.updated_at),
    sequence: Number(h.sequence),
    reference: h.reference === '' || h.reference === undefined ? null : h.reference,
    metadata: parse(h.metadata),
    request: parse(h.request) ?? {},
    upstream: parse(h.upstream),
    result: parse(h.result),
    error: parse(h.error),
    externalTaskId: h.external_task_id,
    webhookUrl: h.webhook_url === '' || h.webhook_url === undefined ? null : h.webhook_url,
    submitSentAt: h.submit_sent_at === '' || h.submit_sent_at === undefined ? null : Number(h.submit_sent_at),
    storedAt: h.stored_at === '' || h.stored_at === undefined ? null : Number(h.stored_at)
  }
}

/** Builds the event for a task as it is after a change. */
export function eventOf (task: TaskRecord, now: number, type: EventType = `video.${task.status}`): TaskEvent {
  return { type, task_id: task.id, caller: task.caller, sequence: task.sequence, timestamp: new Date(now).toISOString(), data: toView(task) }
}

/**
 * Tasks in Redis. Every change goes through one Lua script (create-9, transition-8) so the state check, the
 * write, the event append, the index moves and the live announcement happen together or not at all.
 */
export class TaskStore {
  readonly k: Keys

  constructor (readonly redis: RedisClient, prefix: string, private readonly clock: () => number = Date.now) {
    this.k = keys(prefix)
    redis.defineCommand('kgCreate', { numberOfKeys: 9, lua: lua('create-9') })
    redis.defineCommand('kgTransition', { numberOfKeys: 8, lua: lua('transition-8') })
  }

  async get (id: string): Promise<TaskRecord | null> {
    return decode(await this.redis.hgetall(this.k.task(id)))
  }

  /** Stores a new queued task and its `video.queued` event; `reference` conflicts return the existing id. */
  async create (task: Omit<TaskRecord, 'sequence' | 'status' | 'updatedAt' | 'upstream' | 'result' | 'error' | 'submitSentAt' | 'storedAt'>):
  Promise<{ created: TaskRecord } | { referenceTaken: string }> {
    const record: TaskRecord = { ...task, status: 'queued', sequence: 1, updatedAt: task.createdAt, upstream: null, result: null, error: null, submitSentAt: null, storedAt: null }
    const fields = {
      id: record.id,
      caller: record.caller,
      status: 'queued',
      created_at: String(record.createdAt),
      updated_at: String(record.updatedAt),
      sequence: '1',
      reference: record.reference ?? '',
      metadata: json(record.metadata),
      request: json(record.request),
      external_task_id: record.externalTaskId,
      webhook_url: record.webhookUrl ?? ''
    }
    const k = this.k
    const refKey = record.reference === null ? k.task(record.id) : k.reference(record.caller, record.reference)
    const [outcome, id] = await this.redis.kgCreate(
      k.task(record.id), k.taskEvents(record.id), k.events,
      k.index(record.caller, '*'), k.index(record.caller, 'queued'), k.index('*', '*'), k.index('*', 'queued'), refKey, k.open,
      JSON.stringify(fields), JSON.stringify(eventOf(record, record.createdAt)), record.createdAt, record.id, record.caller,
      STREAM_MAXLEN, record.reference === null ? '0' : '1', k.eventsChannel)
    if (outcome === 'reference') return { referenceTaken: id }
    await this.redis.set(k.external(record.externalTaskId), record.id)
    return { created: record }
  }

  /**
   * Applies `decide(current)` atomically: re-reads and retries when another writer got there first.
   * `decide` returns the change, or null to leave the task alone (a duplicate or stale update). A change to
   * the same status with no event is allowed (bookkeeping such as submitSentAt). `opts.current`, a record the
   * caller has just read, saves the first read; a stale one only costs a retry.
   */
  async transition (id: string, decide: (t: TaskRecord) => Change | null, opts: { requireEmpty?: 'submit_sent_at', event?: boolean, eventType?: EventType, current?: TaskRecord } = {}): Promise<TransitionOutcome> {
    for (let attempt = 0; attempt < 10; attempt++) {
      // A caller that has just read the task may hand it in: the script still checks it is current.
      const current = attempt === 0 && opts.current !== undefined ? opts.current : await this.get(id)
      if (current === null) return { applied: false, reason: 'missing', task: null }
      const change = decide(current)
      if (change === null) return { applied: false, reason: 'not-allowed', task: current }
      const withEvent = opts.event ?? change.to !== current.status
      const now = this.clock()
      const next: TaskRecord = {
        ...current,
        status: change.to,
        updatedAt: withEvent ? now : current.updatedAt,
        sequence: withEvent ? current.sequence + 1 : current.sequence,
        ...(change.upstream !== undefined && { upstream: change.upstream }),
        ...(change.result !== undefined && { result: change.result }),
        ...(change.error !== undefined && { error: change.error }),
        ...(change.submitSentAt !== undefined && { submitSentAt: change.submitSentAt })
      }
      const fields: Record<string, string> = { ...change.extra }
      if (withEvent) fields.updated_at = String(now)
      if (change.upstream !== undefined) fields.upstream = json(change.upstream)
      if (change.result !== undefined) fields.result = json(change.result)
      if (change.error !== undefined) fields.error = json(change.error)
      if (change.submitSentAt !== undefined) fields.submit_sent_at = change.submitSentAt === null ? '' : String(change.submitSentAt)
      const event = withEvent ? eventOf(next, now, opts.eventType) : null
      const k = this.k
      const seq = await this.redis.kgTransition(
        k.task(id), k.taskEvents(id), k.events,
        k.index(current.caller, current.status), k.index(current.caller, next.status), k.index('*', current.status), k.index('*', next.status), k.open,
        current.sequence, current.status, next.status, JSON.stringify(fields), event === null ? '' : JSON.stringify(event),
        current.createdAt, STREAM_MAXLEN, isTerminal(next.status) ? '1' : '0', now, k.eventsChannel, opts.requireEmpty ?? '', event?.type ?? '')
      if (seq > 0) return { applied: true, task: next, event }
      if (seq === -1) return { applied: false, reason: 'missing', task: null }
      if (seq === -2) return { applied: false, reason: 'guarded', task: current }
      // 0: someone else changed it between our read and our write; decide again on fresh state.
    }
    throw new Error(`task ${id}: too much contention`)
  }

  /** The task's events from sequence `after + 1` on. */
  async events (id: string, after = 0): Promise<TaskEvent[]> {
    const raw = await this.redis.lrange(this.k.taskEvents(id), after, -1)
    return raw.map(e => JSON.parse(e) as TaskEvent)
  }

  /**
   * Newest first. Redis orders equal scores by member, descending, so (created_at, id) is a total order and
   * the cursor `created_at:id` of a page's last task says exactly where the next page starts.
   */
  async list (q: { caller: string | null, status?: TaskStatus, limit: number, cursor?: string }): Promise<{ tasks: TaskRecord[], nextCursor: string | null }> {
    const key = this.k.index(q.caller ?? '*', q.status ?? '*')
    const [max, afterId] = q.cursor === undefined ? ['+inf', undefined] : q.cursor.split(':')
    // Over-fetch a little so tasks created in the same millisecond as the cursor can be skipped past it.
    const raw = await this.redis.zrevrangebyscore(key, max, '-inf', 'WITHSCORES', 'LIMIT', 0, q.limit + 101)
    const page: Array<{ id: string, score: string }> = []
    for (let i = 0; i < raw.length && page.length <= q.limit; i += 2) {
      const [id, score] = [raw[i], raw[i + 1]]
      if (afterId !== undefined && score === max && id >= afterId) continue
      page.push({ id, score })
    }
    const more = page.length > q.limit
    const shown = page.slice(0, q.limit)
    const tasks = (await Promise.all(shown.map(({ id }) => this.get(id)))).filter((t): t is TaskRecord => t !== null)
    const last = shown.at(-1)
    return { tasks, nextCursor: more && last !== undefined ? `${last.score}:${last.id}` : null }
  }

  async byReference (caller: string, reference: string): Promise<TaskRecord | null> {
    const id = await this.redis.get(this.k.reference(caller, reference))
    return id === null ? null : await this.get(id)
  }

  async byExternalId (externalTaskId: string): Promise<TaskRecord | null> {
    const id = await this.redis.get(this.k.external(externalTaskId))
    return id === null ? null : await this.get(id)
  }

  /** Reserves an Idempotency-Key for this request, or tells what an earlier request with it did. */
  async reserveIdempotency (caller: string, key: string, fingerprint: string): Promise<IdempotencyState> {
    const k = this.k.idempotency(caller, key)
    const ok = await this.redis.set(k, JSON.stringify({ state: 'pending', fingerprint }), 'PX', IDEMPOTENCY_PENDING_MS, 'NX')
    if (ok === 'OK') return { state: 'new' }
    const raw = await this.redis.get(k)
    if (raw === null) return await this.reserveIdempotency(caller, key, fingerprint)
    return JSON.parse(raw) as IdempotencyState
  }

  async completeIdempotency (caller: string, key: string, fingerprint: string, status: number, body: unknown): Promise<void> {
    await this.redis.set(this.k.idempotency(caller, key), JSON.stringify({ state: 'done', fingerprint, status, body }), 'PX', IDEMPOTENCY_TTL_MS)
  }

  /** Frees a reservation whose request failed before anything was stored, so a retry may run. */
  async releaseIdempotency (caller: string, key: string): Promise<void> {
    await this.redis.del(this.k.idempotency(caller, key))
  }

  /**
   * Stores the decoded Base64 images of a task, by JSON pointer, until upstream accepts it. Returns false (and
   * stores nothing) when the total parked bytes would pass `maxBytes`.
   */
  async park (id: string, images: Map<string, Buffer>, maxBytes = Infinity): Promise<boolean> {
    if (images.size === 0) return true
    let total = 0
    const args: Array<string | Buffer> = []
    for (const [pointer, data] of images) { args.push(pointer, data); total += data.length }
    // Reserve first, so concurrent creates cannot pass the cap together.
    const reserved = await this.redis.incrby(this.k.parkedBytes, total)
    if (reserved > maxBytes) {
      await this.redis.decrby(this.k.parkedBytes, total)
      return false
    }
    try {
      // One command per image: each stays well inside the request connection's 2 s command timeout.
      for (let i = 0; i < args.length; i += 2) await this.redis.hset(this.k.parked(id), args[i], args[i + 1])
    } catch (err) {
      await this.redis.multi().del(this.k.parked(id)).decrby(this.k.parkedBytes, total).exec().catch(() => {})
      throw err
    }
    return true
  }

  async parkedBytes (): Promise<number> {
    return Number(await this.redis.get(this.k.parkedBytes) ?? 0)
  }

  async parked (id: string): Promise<Map<string, Buffer>> {
    const raw = await this.redis.hgetallBuffer(this.k.parked(id))
    return new Map(Object.entries(raw))
  }

  async dropParked (id: string): Promise<void> {
    const images = await this.parked(id)
    if (images.size === 0) return
    const total = [...images.values()].reduce((n, b) => n + b.length, 0)
    const [[, removed]] = await this.redis.multi().del(this.k.parked(id)).exec() as [[Error | null, number]]
    if (removed === 1) await this.redis.decrby(this.k.parkedBytes, total)
  }
}
