/**
 * Per-caller limits kept in Redis (docs/API.md, "Per-caller limits"): the create token bucket, checked before a
 * create does any expensive work; the active-task and daily-unit limits, checked and charged by the create script
 * itself (TaskStore.create); and each caller's usage row. Each refusal is a CallerLimitExceeded (429 naming the
 * limit and its value, with Retry-After).
 */
import {
  LIMIT_FIELDS, limitsFor, unitsOf, type CallerLimits, type CallersConfig, type LimitField
} from '../config/callers.ts'
import { CallerLimitExceeded } from '../domain/errors.ts'
import { DURATIONS, MODES, type Duration, type Mode } from '../domain/models.ts'
import type { LimitStore } from '../store/limits.ts'
import type { CreateLimits, TaskStore } from '../store/tasks.ts'
import type { WebhookStore } from '../store/webhooks.ts'

/** A day's usage hash lives this long after its last charge: long enough for yesterday's row and a refund. */
export const USAGE_TTL_MS = 2 * 24 * 3600_000
/**
 * Retry-After of max_active_tasks: a slot frees when one of the caller's tasks ends, which takes a video's
 * making (tens of seconds to minutes); sooner would only spin.
 */
export const ACTIVE_RETRY_AFTER_S = 15
/** Retry-After of max_webhook_endpoints: only a delete frees one, so a retry is a deliberate act. */
export const ENDPOINTS_RETRY_AFTER_S = 60

/** The UTC day of `ms`, `YYYY-MM-DD`: the daily budgets' day. */
export const utcDay = (ms: number): string => new Date(ms).toISOString().slice(0, 10)

/** Seconds from `ms` to the next UTC midnight, when the daily budgets start again (at least 1). */
export function secondsToUtcMidnight (ms: number): number {
  const d = new Date(ms)
  return Math.max(1, Math.ceil((Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1) - ms) / 1000))
}

/** The refusal of one limit, named by its CALLER_LIMITS field, with its value. */
export function refusal (limits: CallerLimits, limit: Exclude<LimitField, 'weight'>, retryAfterS: number):
CallerLimitExceeded {
  return new CallerLimitExceeded(limit, limits[LIMIT_FIELDS[limit].key], retryAfterS)
}

/**
 * Takes a create token from the caller's bucket (creates_per_minute; 0 = no limit), or throws the 429. A replay
 * of a create that made its task (its Idempotency-Key has a record) takes none: it makes nothing.
 */
export async function takeCreateToken (
  deps: { limitStore: LimitStore, callers: CallersConfig }, caller: string, idempotencyKey?: string
): Promise<void> {
  const limits = limitsFor(deps.callers, caller)
  if (limits.createsPerMinute === 0) return
  const taken = await deps.limitStore.takeCreateToken(caller, limits.createsPerMinute, idempotencyKey)
  if (taken.outcome === 'refused') throw refusal(limits, 'creates_per_minute', taken.retryAfterMs / 1000)
}

/** What the create script checks and charges for one task of `request`'s mode and duration (Kling's defaults). */
export function createLimits (callers: CallersConfig, caller: string, request: Record<string, unknown>, now: number):
CreateLimits {
  const limits = limitsFor(callers, caller)
  const mode = (MODES as readonly unknown[]).includes(request.mode) ? request.mode as Mode : 'std'
  const duration = (DURATIONS as readonly unknown[]).includes(request.duration) ? request.duration as Duration : '5'
  return {
    maxActive: limits.maxActiveTasks,
    dailyUnits: limits.dailyUnits,
    units: unitsOf(callers, mode, duration),
    day: utcDay(now),
    usageTtlMs: USAGE_TTL_MS
  }
}

/** The 429 of a create the script refused by a limit. */
export function createRefusal (callers: CallersConfig, caller: string, limit: 'max_active_tasks' | 'daily_units',
  now: number): CallerLimitExceeded {
  return refusal(limitsFor(callers, caller), limit,
    limit === 'daily_units' ? secondsToUtcMidnight(now) : ACTIVE_RETRY_AFTER_S)
}

export interface UsageRow {
  caller: string
  date: string
  tasks: number
  units: number
  active_tasks: number
  webhook_endpoints: number
  limits: Record<LimitField, number>
}

/** One caller's row of `GET /v1/usage`: today's (UTC) tasks and units, what is open now, and its limits. */
export async function usageRow (
  deps: { store: TaskStore, limitStore: LimitStore, webhooks: WebhookStore, callers: CallersConfig },
  caller: string, now: number
): Promise<UsageRow> {
  const day = utcDay(now)
  const [usage, active, endpoints] = await Promise.all([
    deps.limitStore.usage(caller, day), deps.store.activeTasks(caller), deps.webhooks.countEndpoints(caller)
  ])
  const l = limitsFor(deps.callers, caller)
  return {
    caller,
    date: day,
    tasks: usage.tasks,
    units: usage.units,
    active_tasks: active,
    webhook_endpoints: endpoints,
    limits: {
      creates_per_minute: l.createsPerMinute,
      max_active_tasks: l.maxActiveTasks,
      max_large_bodies: l.maxLargeBodies,
      max_sse_streams: l.maxSseStreams,
      max_webhook_endpoints: l.maxWebhookEndpoints,
      daily_units: l.dailyUnits,
      weight: l.weight
    }
  }
}
