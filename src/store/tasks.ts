import { readFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import type { Redis, Cluster, Result } from 'ioredis'
import { Packr } from 'msgpackr'
import {
  copyFailed, isTerminal, toView, TASK_STATUSES, type EventType, type TaskEvent, type TaskRecord, type TaskStatus
} from '../domain/task.ts'
import { DEFAULT_KIND, isVideoKind, type VideoKind } from '../domain/kinds.ts'
import { keys, type Keys } from './keys.ts'
import { Durability, type DurabilityRule } from './durability.ts'
import { EventStream } from './event-stream.ts'

type RedisClient = Redis | Cluster
const STREAM_MAXLEN = '100000'
/** The pseudo-status of the indexes of held tasks (`idx:<caller|*>:attention`), beside the real statuses'. */
const ATTENTION = 'attention'
export const IDEMPOTENCY_TTL_MS = 24 * 3600_000
/** Parked images that no stored task took over within this long are freed by the sweep. */
export const PARKED_UNCLAIMED_MS = 10 * 60_000
// As BullMQ packs its script arguments: one MessagePack map, read in Lua with cmsgpack.unpack.
const packr = new Packr({ useRecords: false, encodeUndefinedAsNil: true })
export const pack = (args: Record<string, unknown>): Buffer => packr.pack(args)

/** A script and the number of keys it takes, which its file name states (`create-16.lua` takes 16). */
export function script (name: string): { numberOfKeys: number, lua: string } {
  const numberOfKeys = Number(/-(\d+)$/.exec(name)?.[1])
  return { numberOfKeys, lua: readFileSync(new URL(`./lua/${name}.lua`, import.meta.url), 'utf8') }
}

declare module 'ioredis' {
  interface RedisCommander<Context> {
    kgCreate: (...args: Array<string | Buffer>) => Result<[string, string], Context>
    kgTransition: (...args: Array<string | Buffer>) => Result<number, Context>
    kgParked: (...args: Array<string | number>) => Result<number, Context>
    kgWithdraw: (key: string) => Result<number, Context>
    kgForget: (...args: Array<string | Buffer>) => Result<number, Context>
    kgRefund: (task: string, usage: string) => Result<string, Context>
    kgPause: (pause: string, trial: string, args: Buffer) => Result<number, Context>
  }
}

/** A fresh, never-repeating event id: webhook-id, delivery ids and SSE `id:` derive from it, not the sequence. */
export const newEventId = (): string => `evt_${randomBytes(16).toString('base64url')}`

/** The change a caller wants: the status to move to (maybe the same) and the fields to set. */
export interface Change {
  to: TaskStatus
  upstream?: TaskRecord['upstream']
  result?: TaskRecord['result']
  error?: TaskRecord['error']
  submitSentAt?: number | null
  /** When the result videos were copied; also files the task for retention. */
  storedAt?: number | null
  /** The copies were deleted after their retention; also takes the task off the retention list. */
  storedExpired?: boolean
  /**
   * Hold the task for an operator (or null: release it), filing it under the attention indexes. Left out, a change
   * of status releases a held task: upstream has told us where it is.
   */
  attention?: TaskRecord['attention']
  /** A terminal task stays on reconciliation's work list (a deadline failure whose upstream task may still finish). */
  watch?: boolean
}

export interface TransitionOptions {
  /** A field that must be empty for the change to apply (cancel vs. an in-flight submit, submit vs. withdrawn). */
  requireEmpty?: 'submit_sent_at' | 'withdrawn'
  /** Append an event even though the status stays (default: only when it changes). */
  event?: boolean
  eventType?: EventType
  /** The record the caller has just read, to save a read. */
  current?: TaskRecord
}

/** The fields of a task a callback decides by (`getForCallback`). */
export type CallbackView = Pick<TaskRecord, 'id' | 'status' | 'externalTaskId' | 'upstream' | 'error'>

export type TransitionOutcome =
  | { applied: true, task: TaskRecord, event: TaskEvent | null }
  | { applied: false, reason: 'missing' | 'not-allowed' | 'guarded', task: TaskRecord | null }

/** What a create did: a new task, the task an earlier request with the same Idempotency-Key made, or a refusal. */
export type CreateOutcome =
  | { outcome: 'created', task: TaskRecord }
  | { outcome: 'existing', task: TaskRecord }
  | { outcome: 'mismatch', taskId: string }
  | { outcome: 'reference', taskId: string }
  | { outcome: 'limit', limit: 'max_active_tasks' | 'daily_units' }

/**
 * The per-caller limits a create is checked against in its own script (0 = no limit), and what it costs: `units`
 * are charged to the usage hash of `day` (UTC `YYYY-MM-DD`), which expires `usageTtlMs` after its last charge.
 */
export interface CreateLimits { maxActive: number, dailyUnits: number, units: number, day: string, usageTtlMs: number }

/** A task to store; without a kind it is the default one (as every task was before there were kinds). */
export type NewTask = Pick<TaskRecord,
'id' | 'caller' | 'createdAt' | 'reference' | 'metadata' | 'request' | 'externalTaskId' | 'webhookUrl'> &
{ kind?: VideoKind }

const json = (v: unknown) => v === null || v === undefined ? '' : JSON.stringify(v)
const parse = <T>(s: string | undefined): T | null => s === undefined || s === '' ? null : JSON.parse(s) as T
const optional = (s: string | undefined): string | null => s === undefined || s === '' ? null : s

function decode (h: Record<string, string>): TaskRecord | null {
  if (h.id === undefined) return null
  return {
    id: h.id,
    caller: h.caller,
    // Tasks stored before kinds existed have no `kind` field: they are all multi-image2video.
    kind: isVideoKind(h.kind) ? h.kind : DEFAULT_KIND,
    status: h.status as TaskStatus,
    createdAt: Number(h.created_at),
    updatedAt: Number(h.updated_at),
    sequence: Number(h.sequence),
    reference: optional(h.reference),
    metadata: parse(h.metadata),
    request: parse(h.request) ?? {},
    upstream: parse(h.upstream),
    result: parse(h.result),
    error: parse(h.error),
    externalTaskId: h.external_task_id,
    webhookUrl: optional(h.webhook_url),
    submitSentAt: optional(h.submit_sent_at) === null ? null : Number(h.submit_sent_at),
    storedAt: optional(h.stored_at) === null ? null : Number(h.stored_at),
    storedExpired: h.stored_expired === '1',
    withdrawn: h.withdrawn === '1',
    attention: parse(h.attention)
  }
}

/** Events written before events had ids get a stable one derived from (task, sequence). */
function decodeEvent (raw: string): TaskEvent {
  const e = JSON.parse(raw) as TaskEvent
  e.id ??= `evt_${e.task_id}_${e.sequence}`
  // Events stored before tasks could be held carry no `attention`: they were not held.
  e.data.attention ??= null
  return e
}

/** Builds the event for a task as it is after a change; every event gets an id of its own. */
export function eventOf (task: TaskRecord, now: number, type: EventType = `video.${task.status}`): TaskEvent {
  return {
    id: newEventId(),
    type,
    task_id: task.id,
    caller: task.caller,
    sequence: task.sequence,
    timestamp: new Date(now).toISOString(),
    data: toView(task)
  }
}

/**
 * Task state in Redis, and the one door to it: no other module reads or writes a task's keys. Every change is
 * one Lua script (create-16, transition-13, parked-4, withdraw-1, refund-2, forget-18), so the state check, the
 * write, the event append, the index moves and the live announcement happen together or not at all, and every
 * script is safe to run late or twice (a command that timed out on the client may still run). `durable()` is the
 * deployment's durability rule: what the 202 of a create and the mark before an upstream create wait for.
 */
export class TaskStore {
  private readonly k: Keys
  readonly durability: Durability
  /** The stream every event is appended to, for its consumer groups. */
  readonly stream: EventStream

  constructor (
    private readonly redis: RedisClient,
    prefix: string,
    private readonly clock: () => number = Date.now,
    durability?: { connection?: RedisClient, rule: DurabilityRule }
  ) {
    this.k = keys(prefix)
    this.stream = new EventStream(redis, this.k.events)
    this.durability = new Durability(
      durability?.connection, this.k.fence, durability?.rule ?? { replicas: 0, timeoutMs: 0 }
    )
    redis.defineCommand('kgCreate', script('create-16'))
    redis.defineCommand('kgTransition', script('transition-13'))
    redis.defineCommand('kgParked', script('parked-4'))
    redis.defineCommand('kgWithdraw', script('withdraw-1'))
    redis.defineCommand('kgForget', script('forget-18'))
    redis.defineCommand('kgRefund', script('refund-2'))
  }

  /** The prefix BullMQ queues live under: the same hash tag as every task key, so it all runs on one Cluster slot. */
  get queuePrefix (): string { return this.k.bullPrefix }

  /** Resolves once the writes made so far are durable by the deployment's rule; 503 (Unavailable) otherwise. */
  async durable (): Promise<void> {
    await this.durability.ensure()
  }

  async get (id: string): Promise<TaskRecord | null> {
    return decode(await this.redis.hgetall(this.k.task(id)))
  }

  /**
   * Stores a new queued task and its `video.queued` event, or tells what stands in the way. With an
   * Idempotency-Key the key's record is written in the same script as the task, so a late-running create and
   * its retry make one task. Any outcome but `created` frees the images parked under `task.id`. With `limits`, the
   * caller's active tasks and daily units are checked and charged in the same script (outcome `limit`).
   */
  async create (task: NewTask, idempotency?: { key: string, fingerprint: string }, limits?: CreateLimits):
  Promise<CreateOutcome> {
    const record: TaskRecord = {
      ...task,
      kind: task.kind ?? DEFAULT_KIND,
      status: 'queued',
      sequence: 1,
      updatedAt: task.createdAt,
      upstream: null,
      result: null,
      error: null,
      submitSentAt: null,
      storedAt: null,
      storedExpired: false,
      withdrawn: false,
      attention: null
    }
    const fields = {
      id: record.id,
      caller: record.caller,
      kind: record.kind,
      status: 'queued',
      created_at: String(record.createdAt),
      updated_at: String(record.updatedAt),
      sequence: '1',
      reference: record.reference ?? '',
      metadata: json(record.metadata),
      request: json(record.request),
      external_task_id: record.externalTaskId,
      webhook_url: record.webhookUrl ?? '',
      // So retention can delete the key's record with the task (a record outlives its TTL only in tests' time).
      idempotency_digest: idempotency === undefined ? '' : this.k.digest(idempotency.key)
    }
    const k = this.k
    const event = eventOf(record, record.createdAt)
    const [outcome, id] = await this.redis.kgCreate(
      k.task(record.id), k.taskEvents(record.id), k.events,
      k.index(record.caller, '*'), k.index(record.caller, 'queued'), k.index('*', '*'), k.index('*', 'queued'),
      record.reference === null ? k.task(record.id) : k.reference(record.caller, record.reference), k.open,
      idempotency === undefined ? k.task(record.id) : k.idempotency(record.caller, idempotency.key),
      k.parked(record.id), k.parkedBytes, k.parkedPending,
      k.index(record.caller, 'submitted'), k.index(record.caller, 'processing'),
      limits === undefined ? k.task(record.id) : k.usage(record.caller, limits.day),
      pack({
        id: record.id,
        caller: record.caller,
        created_at: String(record.createdAt),
        fields,
        event: JSON.stringify(event),
        event_id: event.id,
        maxlen: STREAM_MAXLEN,
        reference: record.reference !== null,
        idempotency: idempotency === undefined
          ? undefined
          : { fingerprint: idempotency.fingerprint, ttl_ms: String(IDEMPOTENCY_TTL_MS) },
        limits: limits === undefined
          ? undefined
          : {
              max_active: String(limits.maxActive),
              daily_units: String(limits.dailyUnits),
              units: String(limits.units),
              usage_ttl_ms: String(limits.usageTtlMs)
            }
      }))
    if (outcome === 'created') return { outcome, task: id === record.id ? record : await this.mustGet(id) }
    if (outcome === 'existing') return { outcome, task: await this.mustGet(id) }
    if (outcome === 'mismatch' || outcome === 'reference') return { outcome, taskId: id }
    if (outcome === 'limit' && (id === 'max_active_tasks' || id === 'daily_units')) return { outcome, limit: id }
    throw new Error(`create script answered ${outcome}`)
  }

  private async mustGet (id: string): Promise<TaskRecord> {
    const task = await this.get(id)
    if (task === null) throw new Error(`task ${id} vanished`)
    return task
  }

  /**
   * Applies `decide(current)` atomically: re-reads and retries when another writer got there first.
   * `decide` returns the change, or null to leave the task alone (a duplicate or stale update). A change to
   * the same status with no event is allowed (bookkeeping such as submitSentAt). `opts.current`, a record the
   * caller has just read, saves the first read; a stale one only costs a retry.
   */
  async transition (id: string, decide: (t: TaskRecord) => Change | null, opts: TransitionOptions = {}):
  Promise<TransitionOutcome> {
    for (let attempt = 0; attempt < 10; attempt++) {
      // A caller that has just read the task may hand it in: the script still checks it is current.
      const current = attempt === 0 && opts.current !== undefined ? opts.current : await this.get(id)
      if (current === null) return { applied: false, reason: 'missing', task: null }
      const change = decide(current)
      if (change === null) return { applied: false, reason: 'not-allowed', task: current }
      const withEvent = opts.event ?? change.to !== current.status
      const now = this.clock()
      // A held task whose status moves is no longer lost: upstream said where it is (or an operator did).
      const attention = change.attention !== undefined
        ? change.attention
        : change.to !== current.status && current.attention !== null ? null : undefined
      const next: TaskRecord = {
        ...current,
        status: change.to,
        updatedAt: withEvent ? now : current.updatedAt,
        sequence: withEvent ? current.sequence + 1 : current.sequence,
        ...(change.upstream !== undefined && { upstream: change.upstream }),
        ...(change.result !== undefined && { result: change.result }),
        ...(change.error !== undefined && { error: change.error }),
        ...(change.submitSentAt !== undefined && { submitSentAt: change.submitSentAt }),
        ...(change.storedAt !== undefined && { storedAt: change.storedAt }),
        ...(change.storedExpired !== undefined && { storedExpired: change.storedExpired }),
        ...(attention !== undefined && { attention })
      }
      const fields: Record<string, string> = {}
      if (withEvent) fields.updated_at = String(now)
      if (change.upstream !== undefined) fields.upstream = json(change.upstream)
      if (change.result !== undefined) fields.result = json(change.result)
      if (change.error !== undefined) fields.error = json(change.error)
      if (change.submitSentAt !== undefined) {
        fields.submit_sent_at = change.submitSentAt === null ? '' : String(change.submitSentAt)
      }
      if (change.storedAt !== undefined) fields.stored_at = change.storedAt === null ? '' : String(change.storedAt)
      if (change.storedExpired !== undefined) fields.stored_expired = change.storedExpired ? '1' : ''
      if (attention !== undefined) fields.attention = json(attention)
      const event = withEvent ? eventOf(next, now, opts.eventType) : null
      const stored = change.storedAt !== undefined && change.storedAt !== null
        ? String(change.storedAt)
        : change.storedExpired === true ? 'remove' : undefined
      // A success joins the copy's work list with its status change; it leaves once stored or given up.
      const copying = next.status === 'succeeded' && current.status !== 'succeeded'
        ? String(now)
        : next.storedAt !== null || (next.status === 'succeeded' && copyFailed(next)) ? 'remove' : undefined
      const k = this.k
      const seq = await this.redis.kgTransition(
        k.task(id), k.taskEvents(id), k.events,
        k.index(current.caller, current.status), k.index(current.caller, next.status),
        k.index('*', current.status), k.index('*', next.status), k.open, k.stored, k.copying,
        k.index(current.caller, ATTENTION), k.index('*', ATTENTION), k.ended,
        pack({
          expected: String(current.sequence),
          from: current.status,
          to: next.status,
          fields,
          event: event === null ? '' : JSON.stringify(event),
          event_type: event?.type ?? '',
          event_id: event?.id ?? '',
          created_at: String(current.createdAt),
          maxlen: STREAM_MAXLEN,
          terminal: isTerminal(next.status),
          now: String(now),
          guard: opts.requireEmpty ?? '',
          stored,
          copying,
          watch: change.watch === true,
          attention: attention === undefined ? undefined : attention === null ? 'remove' : 'set',
          // Retention counts from when the task ended; a late success (failed → succeeded) ends it again.
          ended: isTerminal(next.status) && next.status !== current.status ? String(now) : undefined
        }))
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
    return raw.map(decodeEvent)
  }

  /**
   * Newest first. Redis orders equal scores by member, descending, so (created_at, id) is a total order and
   * the cursor `created_at:id` of a page's last task says exactly where the next page starts.
   */
  async list (q: { caller: string | null, status?: TaskStatus, attention?: boolean, limit: number, cursor?: string }):
  Promise<{ tasks: TaskRecord[], nextCursor: string | null }> {
    const key = this.k.index(q.caller ?? '*', q.attention === true ? ATTENTION : q.status ?? '*')
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
    const tasks = (await Promise.all(shown.map(async ({ id }) => await this.get(id))))
      .filter((t): t is TaskRecord => t !== null)
    const last = shown.at(-1)
    return { tasks, nextCursor: more && last !== undefined ? `${last.score}:${last.id}` : null }
  }

  /**
   * Marks a queued, unsent task as withdrawn (its create answered 503 to a caller who cannot find it again);
   * true when marked. The submit job then cancels it instead of sending it.
   */
  async withdraw (id: string): Promise<boolean> {
    return await this.redis.kgWithdraw(this.k.task(id)) === 1
  }

  /**
   * Gives back the units a task was charged when it was canceled before it was ever sent upstream (refund-2:
   * checked there, once). `day` is the UTC day it was created on, whose usage it was charged to. Returns the units.
   */
  async refundUnits (task: Pick<TaskRecord, 'id' | 'caller'>, day: string): Promise<number> {
    return Number(await this.redis.kgRefund(this.k.task(task.id), this.k.usage(task.caller, day)))
  }

  /** The caller's tasks not yet terminal (what max_active_tasks counts), by the same indexes the create reads. */
  async activeTasks (caller: string): Promise<number> {
    const counts = await Promise.all(['queued', 'submitted', 'processing']
      .map(async s => await this.redis.zcard(this.k.index(caller, s))))
    return counts.reduce((a, b) => a + b, 0)
  }

  /** What an earlier create with this Idempotency-Key made, if one did (a read; the create script decides). */
  async idempotentTask (caller: string, key: string): Promise<{ fingerprint: string, taskId: string } | null> {
    const [fingerprint, taskId] = await this.redis.hmget(this.k.idempotency(caller, key), 'fingerprint', 'task_id')
    return fingerprint === null || taskId === null ? null : { fingerprint, taskId }
  }

  async byReference (caller: string, reference: string): Promise<TaskRecord | null> {
    const id = await this.redis.get(this.k.reference(caller, reference))
    return id === null ? null : await this.get(id)
  }

  /** Tasks not terminal and quiet since `before` (ms), oldest first: reconciliation's work list. */
  async quietTasks (before: number, limit: number): Promise<string[]> {
    return await this.redis.zrangebyscore(this.k.open, '-inf', before, 'LIMIT', 0, limit)
  }

  /** Tasks whose videos were stored before `before` (ms): retention's work list. */
  async storedBefore (before: number, limit: number): Promise<string[]> {
    return await this.redis.zrangebyscore(this.k.stored, '-inf', before, 'LIMIT', 0, limit)
  }

  /**
   * Succeeded tasks whose result is neither stored nor given up and that were last queued for their copy before
   * `before` (ms), oldest first; each one taken is marked queued `now`, so a sweep after the next gets it again and
   * a long backlog is worked through in turns.
   */
  async copyBacklog (before: number, limit: number): Promise<string[]> {
    const ids = await this.redis.zrangebyscore(this.k.copying, '-inf', before, 'LIMIT', 0, limit)
    if (ids.length > 0) await this.redis.zadd(this.k.copying, 'XX', ...ids.flatMap(id => [String(this.clock()), id]))
    return ids
  }

  /**
   * The scripts keep the copying set, but a task can be missing from it: it succeeded before the set existed, on a
   * replica of an older version during a rolling upgrade, or in a restored Redis. So the succeeded index is walked,
   * `limit` tasks a call (a rank kept in Redis, so the walk resumes across sweeps and replicas, and starts over at
   * the end), and those neither stored nor given up are added. Returns how many it added.
   */
  async backfillCopying (limit: number): Promise<number> {
    const k = this.k
    const from = Number(await this.redis.get(k.copyingBackfill) ?? 0)
    const ids = await this.redis.zrange(k.index('*', 'succeeded'), String(from), String(from + limit - 1))
    const rows = ids.length === 0
      ? []
      : await this.redis.pipeline(ids.map(id => ['hmget', k.task(id), 'status', 'stored_at', 'result'])).exec() ?? []
    let added = 0
    for (const [i, [err, row]] of rows.entries()) {
      if (err !== null) throw err
      const [status, storedAt, result] = row as Array<string | null>
      if (status !== 'succeeded' || (storedAt ?? '') !== '' || copyFailed({ result: parse(result ?? '') })) continue
      // NX: a task the scripts already track keeps its score. 0 = due at once.
      added += await this.redis.zadd(k.copying, 'NX', 0, ids[i])
    }
    await this.redis.set(k.copyingBackfill, ids.length < limit ? '0' : String(from + ids.length))
    return added
  }

  /** Terminal tasks that ended at or before `before` (ms), oldest first, from rank `offset`: retention's work list. */
  async endedBefore (before: number, offset: number, limit: number): Promise<string[]> {
    return await this.redis.zrangebyscore(this.k.ended, '-inf', before, 'LIMIT', offset, limit)
  }

  /**
   * Removes a task that ended at or before `before` with everything that is its own (forget-18.lua, which judges
   * whether it may go: see its header). `check` only asks. The task's deliveries must be gone first (`deliveries`).
   */
  async forget (task: TaskRecord, before: number, check = false):
  Promise<'removed' | 'gone' | 'kept' | 'deliveries' | 'moved'> {
    const k = this.k
    const id = task.id
    const digest = (await this.redis.hget(k.task(id), 'idempotency_digest')) ?? ''
    const answer = await this.redis.kgForget(
      k.task(id), k.taskEvents(id), k.parked(id), k.taskDeliveries(id),
      k.index(task.caller, '*'), k.index(task.caller, task.status), k.index('*', '*'), k.index('*', task.status),
      k.index(task.caller, ATTENTION), k.index('*', ATTENTION), k.open, k.stored, k.copying, k.ended,
      task.reference === null ? k.task(id) : k.reference(task.caller, task.reference),
      digest === '' ? k.task(id) : k.idempotencyDigest(task.caller, digest),
      k.parkedBytes, k.parkedPending,
      pack({ id, status: task.status, terminal: TASK_STATUSES.filter(isTerminal), before: String(before), check }))
    const outcomes = { 1: 'removed', 0: 'gone', [-1]: 'kept', [-2]: 'deliveries', [-3]: 'moved' } as const
    return outcomes[answer as keyof typeof outcomes] ?? 'kept'
  }

  /** Takes an id off the ended set outside the script: its task is gone already. */
  async leaveEnded (id: string): Promise<void> {
    await this.redis.zrem(this.k.ended, id)
  }

  /**
   * Terminal tasks the transition script never filed in `ended` (they ended before it did, or on a replica of an
   * older version) are found by a walk of `idx:*:*`, `limit` a call (its rank kept in Redis, starting over at the
   * end), and filed by their last change. Returns how many it added.
   */
  async backfillEnded (limit: number): Promise<number> {
    const k = this.k
    const from = Number(await this.redis.get(k.endedBackfill) ?? 0)
    const ids = await this.redis.zrange(k.index('*', '*'), String(from), String(from + limit - 1))
    const rows = ids.length === 0
      ? []
      : await this.redis.pipeline(ids.map(id => ['hmget', k.task(id), 'status', 'updated_at'])).exec() ?? []
    let added = 0
    for (const [i, [err, row]] of rows.entries()) {
      if (err !== null) throw err
      const [status, updatedAt] = row as Array<string | null>
      if (status === null || !isTerminal(status as TaskStatus)) continue
      // NX: the script's own score (when it ended) is better than the last change's.
      added += await this.redis.zadd(k.ended, 'NX', Number(updatedAt ?? 0), ids[i])
    }
    await this.redis.set(k.endedBackfill, ids.length < limit ? '0' : String(from + ids.length))
    return added
  }

  /** Marks a task of the copying set as queued for its copy now (a long first attempt), if it is still there. */
  async markCopyQueued (id: string): Promise<void> {
    await this.redis.zadd(this.k.copying, 'XX', this.clock(), id)
  }

  /** Takes a task off the copying set outside a transition: it is gone, or stored or given up after all. */
  async leaveCopying (id: string): Promise<void> {
    await this.redis.zrem(this.k.copying, id)
  }

  /** How many tasks are in each status (for metrics). */
  async countByStatus (): Promise<Record<TaskStatus, number>> {
    const counts = await Promise.all(TASK_STATUSES.map(async s => await this.redis.zcard(this.k.index('*', s))))
    return Object.fromEntries(TASK_STATUSES.map((s, i) => [s, counts[i]])) as Record<TaskStatus, number>
  }

  /** How many tasks are held for an operator (for metrics). */
  async countNeedingAttention (): Promise<number> {
    return await this.redis.zcard(this.k.index('*', ATTENTION))
  }

  /**
   * What a callback decides by, in one plain command: a few fields, not the whole record (most callbacks are
   * repeats, and the request and result are most of a task's bytes; one that changes something reads the record in
   * its transition).
   */
  async getForCallback (id: string): Promise<CallbackView | null> {
    const [taskId, status, externalTaskId, upstream, error] =
      await this.redis.hmget(this.k.task(id), 'id', 'status', 'external_task_id', 'upstream', 'error')
    if (taskId === null) return null
    return {
      id: taskId,
      status: status as TaskStatus,
      externalTaskId: externalTaskId ?? '',
      upstream: parse(upstream ?? undefined),
      error: parse(error ?? undefined)
    }
  }

  /**
   * Stores the decoded Base64 images of a task, by JSON pointer, until upstream accepts it. Returns false (and
   * stores nothing) when the total parked bytes would pass `maxBytes`. Until a stored task owns them they are
   * "pending": a create that fails frees them (`releaseParked`), and the sweep frees any it could not.
   */
  async park (id: string, images: Map<string, Buffer>, maxBytes = Infinity): Promise<boolean> {
    if (images.size === 0) return true
    let total = 0
    for (const data of images.values()) total += data.length
    const cap = Number.isFinite(maxBytes) ? maxBytes : Number.MAX_SAFE_INTEGER
    if (await this.parkedScript('reserve', id, total, cap, this.clock()) === 0) return false
    try {
      // One command per image: each stays well inside the request connection's 2 s command timeout.
      for (const [pointer, data] of images) await this.redis.hset(this.k.parked(id), pointer, data)
    } catch (err) {
      await this.releaseParked(id).catch(() => {})
      throw err
    }
    return true
  }

  /**
   * A streamed create's first step (src/services/intake.ts): reserves `estimate` bytes under `id` before any image
   * part is written, so that PARKED_MAX_BYTES holds while the body arrives. False: over the cap, nothing reserved.
   */
  async reserveParked (id: string, estimate: number, maxBytes = Infinity): Promise<boolean> {
    const cap = Number.isFinite(maxBytes) ? maxBytes : Number.MAX_SAFE_INTEGER
    return await this.parkedScript('reserve', id, estimate, cap, this.clock()) === 1
  }

  /**
   * One part of a streamed image (field `<pointer>#<n>`; a small image has the field `<pointer>` alone). One command
   * per part, each far inside the request connection's 2 s budget.
   */
  async parkPart (id: string, field: string, data: Buffer): Promise<void> {
    await this.redis.hset(this.k.parked(id), field, data)
  }

  /** Removes fields of a streamed create's parked images (an image given twice: the first one's parts). */
  async unparkFields (id: string, fields: string[]): Promise<void> {
    if (fields.length > 0) await this.redis.hdel(this.k.parked(id), ...fields)
  }

  /**
   * A streamed create, once checked: the reservation becomes the exact `total` of its images and its small images
   * join the parts already parked. False (nothing changed; the route's onResponse frees the parts) when that is over
   * the cap.
   */
  async settleParked (id: string, images: Map<string, Buffer>, total: number, maxBytes = Infinity): Promise<boolean> {
    if (total === 0) {
      // Nothing to park after all (every image a URL): what the body reserved goes back.
      await this.releaseParked(id)
      return true
    }
    const cap = Number.isFinite(maxBytes) ? maxBytes : Number.MAX_SAFE_INTEGER
    // The size first, as `park` does: bytes are never written that no reservation (and pending mark) covers.
    if (await this.parkedScript('resize', id, total, cap, this.clock()) === 0) return false
    for (const [pointer, data] of images) await this.redis.hset(this.k.parked(id), pointer, data)
    return true
  }

  async parkedBytes (): Promise<number> {
    return Number(await this.redis.get(this.k.parkedBytes) ?? 0)
  }

  /** A task's parked images, whole, by pointer (parts joined). The submit job streams them instead (parkedParts). */
  async parked (id: string): Promise<Map<string, Buffer>> {
    const out = new Map<string, Buffer>()
    for (const [pointer, fields] of await this.parkedLayout(id)) {
      const parts = await this.redis.hmgetBuffer(this.k.parked(id), ...fields)
      if (parts.every(p => p !== null)) out.set(pointer, Buffer.concat(parts as Buffer[]))
    }
    return out
  }

  /**
   * Where each parked image of a task is: its fields in order (`<pointer>` alone, or `<pointer>#0`, `#1`, … for a
   * streamed one), without reading a byte of them.
   */
  async parkedLayout (id: string): Promise<Map<string, string[]>> {
    const byPointer = new Map<string, Array<{ field: string, n: number }>>()
    for (const field of await this.redis.hkeys(this.k.parked(id))) {
      if (field === '#bytes') continue
      const hash = field.lastIndexOf('#')
      const pointer = hash < 0 ? field : field.slice(0, hash)
      const n = hash < 0 ? 0 : Number(field.slice(hash + 1))
      const list = byPointer.get(pointer) ?? []
      list.push({ field, n })
      byPointer.set(pointer, list)
    }
    const ordered = (list: Array<{ field: string, n: number }>) => list.sort((a, b) => a.n - b.n).map(f => f.field)
    return new Map([...byPointer].map(([pointer, list]) => [pointer, ordered(list)]))
  }

  /** The bytes of each of `fields` of a task's parked images (HSTRLEN, one round trip). */
  async parkedSizes (id: string, fields: string[]): Promise<number[]> {
    const pipeline = this.redis.pipeline()
    for (const field of fields) pipeline.hstrlen(this.k.parked(id), field)
    const results = await pipeline.exec() ?? []
    return results.map(([err, n]) => { if (err !== null) throw err; return Number(n) })
  }

  /** One field of a task's parked images; null when it is gone. */
  async parkedField (id: string, field: string): Promise<Buffer | null> {
    return await this.redis.hgetBuffer(this.k.parked(id), field)
  }

  /** Frees the images parked under `id` unless a stored task owns them (its create may have run after all). */
  async releaseParked (id: string): Promise<void> {
    await this.parkedScript('release', id)
  }

  /** Frees a task's parked images: upstream has the task, or it ended. Safe to call again. */
  async dropParked (id: string): Promise<void> {
    await this.parkedScript('drop', id)
  }

  /** Frees images parked longer than PARKED_UNCLAIMED_MS ago that no stored task took over; returns how many. */
  async releaseUnclaimedParked (): Promise<number> {
    const ids = await this.redis.zrangebyscore(this.k.parkedPending, '-inf', this.clock() - PARKED_UNCLAIMED_MS,
      'LIMIT', 0, 500)
    for (const id of ids) await this.releaseParked(id)
    return ids.length
  }

  private async parkedScript (op: 'reserve' | 'resize' | 'release' | 'drop', id: string, ...rest: number[]):
  Promise<number> {
    const k = this.k
    return await this.redis.kgParked(k.parked(id), k.parkedBytes, k.parkedPending, k.task(id), op, id, ...rest)
  }
}
