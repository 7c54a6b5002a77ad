import { round } from './stats.ts'
import type { Machine } from './machine.ts'

/** One measured quantity: ours, the floor measured in the same run, ours/floor, and the target if there is one. */
export interface Row {
  bench: string
  metric: string
  unit: string
  ours: number | null
  floor: number | null
  /** Target as text (e.g. "< 700"), and whether ours meets it; null when there is no target. */
  target: string | null
  target_met: boolean | null
  /**
   * Share of the machine's CPU that processes outside this benchmark used while it measured (0..1). Above a few
   * percent someone else was running on the machine and the numbers are noisy.
   */
  others_share?: number | null
  details?: Record<string, unknown>
}

export interface ResultLine extends Row {
  ratio: number | null
  ts: string
  machine: Machine
}

export function row (
  r: Omit<Row, 'target_met' | 'target'> & { target?: { text: string, met: (ours: number) => boolean } }
): Row {
  const { target, ...rest } = r
  return {
    ...rest,
    target: target?.text ?? null,
    target_met: target === undefined || rest.ours === null || !Number.isFinite(rest.ours)
      ? (target === undefined ? null : false)
      : target.met(rest.ours)
  }
}

export function toLine (r: Row, m: Machine, ts: string): ResultLine {
  const ratio = r.ours !== null && r.floor !== null && r.floor !== 0 &&
    Number.isFinite(r.ours) && Number.isFinite(r.floor)
    ? round(r.ours / r.floor, 2)
    : null
  return {
    bench: r.bench,
    metric: r.metric,
    unit: r.unit,
    ours: r.ours === null ? null : round(r.ours),
    floor: r.floor === null ? null : round(r.floor),
    ratio,
    target: r.target,
    target_met: r.target_met,
    ts,
    machine: m,
    ...(r.others_share !== undefined && { others_share: r.others_share }),
    ...(r.details !== undefined && { details: r.details })
  }
}

function fmt (x: number | null, unit = ''): string {
  if (x === null || !Number.isFinite(x)) return '—'
  const s = Math.abs(x) >= 100 ? Math.round(x).toLocaleString('en-US') : String(round(x, 2))
  return unit === '' ? s : `${s} ${unit}`
}

/** The results as a markdown table, padded so it also reads well in a terminal. */
export function markdownTable (lines: ResultLine[]): string {
  const header = ['bench', 'metric', 'ours', 'floor', 'ratio', 'target']
  const rows = lines.map(l => [
    l.bench,
    l.metric,
    fmt(l.ours, l.unit),
    fmt(l.floor, l.unit),
    l.ratio === null ? '—' : `${l.ratio}×`,
    l.target === null ? '—' : `${l.target} ${l.target_met === true ? '✓' : '✗'}`
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map(r => r[i].length)))
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`
  return [line(header), `|${widths.map(w => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n')
}
