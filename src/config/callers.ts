/**
 * Per-caller limits and shares (docs/API.md, "Per-caller limits"): one global default each (CALLER_* variables,
 * `0` = no limit), overridden per caller by CALLER_LIMITS, a JSON object of caller name → some of the same fields:
 *
 *   CALLER_LIMITS={"render-farm":{"creates_per_minute":600,"weight":3},"intern":{"daily_units":20}}
 *
 * `weight` is the caller's share of UPSTREAM_CONCURRENCY against the others that have work (default 1), and
 * `daily_units` its upstream budget per UTC day in the units of UPSTREAM_UNITS (default CALLER_DAILY_UNITS).
 * Every route that enforces a limit asks `limitsFor(config, caller)`; nothing else reads these variables.
 */
import { DURATIONS, MODES, type Duration, type Mode } from '../domain/models.ts'

export interface CallerLimits {
  /** Token bucket: this many creates per minute, in bursts of as many. */
  createsPerMinute: number
  /** Tasks of this caller not yet terminal. */
  maxActiveTasks: number
  /** Create bodies over LARGE_BODY_BYTES this caller may have in flight on one replica. */
  maxLargeBodies: number
  /** Open SSE streams of this caller on one replica. */
  maxSseStreams: number
  /** Registered webhook endpoints. */
  maxWebhookEndpoints: number
  /** Upstream units per UTC day (UPSTREAM_UNITS). */
  dailyUnits: number
  /** Share of the upstream concurrency against other callers with work (1 = equal). */
  weight: number
}

/** The JSON field names of CALLER_LIMITS, and the CALLER_* variable that holds each one's global default. */
export const LIMIT_FIELDS = {
  creates_per_minute: { key: 'createsPerMinute', variable: 'CALLER_CREATES_PER_MINUTE' },
  max_active_tasks: { key: 'maxActiveTasks', variable: 'CALLER_MAX_ACTIVE_TASKS' },
  max_large_bodies: { key: 'maxLargeBodies', variable: 'CALLER_MAX_LARGE_BODIES' },
  max_sse_streams: { key: 'maxSseStreams', variable: 'CALLER_MAX_SSE_STREAMS' },
  max_webhook_endpoints: { key: 'maxWebhookEndpoints', variable: 'CALLER_MAX_WEBHOOK_ENDPOINTS' },
  daily_units: { key: 'dailyUnits', variable: 'CALLER_DAILY_UNITS' },
  weight: { key: 'weight', variable: null }
} as const satisfies Record<string, { key: keyof CallerLimits, variable: string | null }>
export type LimitField = keyof typeof LIMIT_FIELDS

export interface CallersConfig {
  defaults: CallerLimits
  /** Caller name → its overrides (only the fields given). */
  overrides: Record<string, Partial<CallerLimits>>
  /** Upstream units one task costs, by mode and duration. */
  units: Record<`${Mode}:${Duration}`, number>
}

/** What one task costs by default (Kling's published ratio: pro = 3.5 × std, 10 s = 2 × 5 s); set your contract's. */
export const DEFAULT_UNITS: CallersConfig['units'] = { 'std:5': 1, 'std:10': 2, 'pro:5': 3.5, 'pro:10': 7 }

/** The limits that apply to `caller`: its overrides over the global defaults. `0` means no limit. */
export function limitsFor (callers: CallersConfig, caller: string): CallerLimits {
  const own = Object.hasOwn(callers.overrides, caller) ? callers.overrides[caller] : undefined
  return own === undefined ? callers.defaults : { ...callers.defaults, ...own }
}

/** Units one task of `mode` and `duration` costs. */
export function unitsOf (callers: CallersConfig, mode: Mode, duration: Duration): number {
  return callers.units[`${mode}:${duration}`]
}

const CALLER_NAME = /^[A-Za-z0-9_.-]{1,64}$/
const isLimit = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 1e9

/** Parses CALLER_LIMITS; problems name the variable and the caller or field, never a value. */
export function parseCallerLimits (raw: string | undefined, problems: string[]): CallersConfig['overrides'] {
  if (raw === undefined) return {}
  let parsed: unknown
  try { parsed = JSON.parse(raw) } catch { parsed = undefined }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    problems.push('CALLER_LIMITS: must be a JSON object of caller name → { "creates_per_minute": 60, … }')
    return {}
  }
  const out: CallersConfig['overrides'] = {}
  for (const [caller, fields] of Object.entries(parsed)) {
    if (!CALLER_NAME.test(caller)) {
      problems.push(`CALLER_LIMITS: "${caller.slice(0, 64)}" is not a caller name (A-Z a-z 0-9 _ . -, 1–64)`)
      continue
    }
    if (typeof fields !== 'object' || fields === null || Array.isArray(fields)) {
      problems.push(`CALLER_LIMITS.${caller}: must be an object of limits`)
      continue
    }
    const own: Partial<CallerLimits> = {}
    for (const [field, v] of Object.entries(fields as Record<string, unknown>)) {
      if (!Object.hasOwn(LIMIT_FIELDS, field)) {
        const known = Object.keys(LIMIT_FIELDS).join(', ')
        problems.push(`CALLER_LIMITS.${caller}.${field.slice(0, 40)}: unknown; known: ${known}`)
        continue
      }
      const spec = LIMIT_FIELDS[field as LimitField]
      const ok = field === 'weight' ? isLimit(v) && v >= 1 && v <= 1000 : isLimit(v)
      if (!ok) {
        const range = field === 'weight' ? '1–1000' : '≥ 0 (0 = no limit)'
        problems.push(`CALLER_LIMITS.${caller}.${field}: must be an integer ${range}`)
        continue
      }
      own[spec.key] = v as number
    }
    out[caller] = own
  }
  return out
}

/** Parses UPSTREAM_UNITS (`{"std:5":1,"pro:10":7}`, each given replaces its default); problems name the entry. */
export function parseUnits (raw: string | undefined, problems: string[]): CallersConfig['units'] {
  const units = { ...DEFAULT_UNITS }
  if (raw === undefined) return units
  let parsed: unknown
  try { parsed = JSON.parse(raw) } catch { parsed = undefined }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    problems.push('UPSTREAM_UNITS: must be a JSON object of "mode:duration" → units, e.g. {"std:5":1,"pro:10":7}')
    return units
  }
  const known = MODES.flatMap(m => DURATIONS.map(d => `${m}:${d}`))
  for (const [k, v] of Object.entries(parsed)) {
    if (!known.includes(k)) {
      problems.push(`UPSTREAM_UNITS: "${k.slice(0, 20)}" is not one of ${known.join(', ')}`)
    } else if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 1e6) {
      problems.push(`UPSTREAM_UNITS.${k}: must be a number ≥ 0`)
    } else {
      units[k as keyof typeof units] = v
    }
  }
  return units
}
