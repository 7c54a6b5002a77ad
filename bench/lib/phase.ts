import { cpus } from 'node:os'
import { round } from './stats.ts'
import type { ClosedResult, PhaseResult } from '../load.ts'

/** How many answers had a 2xx status. */
export function okCount (p: PhaseResult): number {
  return Object.entries(p.statuses).filter(([s]) => Number(s) >= 200 && Number(s) < 300).reduce((n, [, c]) => n + c, 0)
}

/** The measured phase of a closed-loop run, for a result line's details. */
export function phaseDetails (r: ClosedResult, connections: number): Record<string, unknown> {
  const m = r.measured
  return {
    requests: m.requests,
    duration_ms: round(m.durationMs, 0),
    connections,
    statuses: m.statuses,
    errors: m.errors,
    error_samples: m.errorSamples,
    latency_ms: {
      p50: round(m.latencyMs.p50),
      p90: round(m.latencyMs.p90),
      p99: round(m.latencyMs.p99),
      max: round(m.latencyMs.max)
    },
    cpu_us_per_request: Object.fromEntries(
      Object.entries(m.cpuMs)
        .filter(([k]) => k !== 'machine' && k !== 'others')
        .map(([k, v]) => [k, v === null ? null : round(v * 1000 / Math.max(1, m.requests), 1)])
    ),
    ...cpuShares(m),
    warmup: { requests: r.warmup.requests, statuses: r.warmup.statuses, errors: r.warmup.errors }
  }
}

/**
 * Of all the machine's CPU time during the phase: how much was busy, and how much went to processes that are not
 * part of this benchmark (another job on a shared machine; anything above a few % makes the run noisy).
 */
export function cpuShares (
  p: { durationMs: number, cpuMs: Record<string, number | null> }
): { machine_busy: number | null, others_share: number | null } {
  const capacity = p.durationMs * cpus().length
  const share = (v: number | null | undefined) => v === null || v === undefined ? null : round(v / capacity, 2)
  return { machine_busy: share(p.cpuMs.machine), others_share: share(p.cpuMs.others) }
}
