/** Nearest-rank percentile of values (any order); NaN when empty. */
export function percentile (values: ArrayLike<number>, p: number): number {
  const n = values.length
  if (n === 0) return NaN
  const sorted = Float64Array.from(values).sort()
  const rank = Math.min(n, Math.max(1, Math.ceil(p / 100 * n)))
  return sorted[rank - 1]
}

export interface LatencySummary { n: number, p50: number, p90: number, p99: number, max: number, mean: number }

/** Percentiles in the unit the values are in. */
export function summarize (values: ArrayLike<number>): LatencySummary {
  const n = values.length
  let sum = 0
  let max = n === 0 ? NaN : -Infinity
  for (let i = 0; i < n; i++) { sum += values[i]; if (values[i] > max) max = values[i] }
  return {
    n,
    p50: percentile(values, 50),
    p90: percentile(values, 90),
    p99: percentile(values, 99),
    max,
    mean: n === 0 ? NaN : sum / n
  }
}

/** Rounds to `digits` significant decimals for output. */
export function round (x: number, digits = 3): number {
  if (!Number.isFinite(x)) return x
  const f = 10 ** digits
  return Math.round(x * f) / f
}
