/** The printed table and the JSON lines. */
import type { CaseResult } from './case.ts'
import { BAD, type Counters } from './verify.ts'

const COLUMNS: Array<{ head: string, get: (c: Counters, r: CaseResult) => string | number | null }> = [
  { head: 'accepted', get: c => c.accepted },
  { head: 'gave up', get: (_c, r) => r.details?.gave_up ?? null },
  { head: 'orphans', get: (_c, r) => r.details?.orphans ?? null },
  { head: 'lost', get: c => c.lost },
  { head: 'stuck', get: c => c.stuck },
  { head: 'duplicate tasks', get: c => c.duplicate_tasks },
  { head: 'paid twice', get: c => c.paid_twice },
  { head: 'reused event ids', get: c => c.reused_event_ids },
  { head: 'missing webhooks', get: c => c.missing_webhooks },
  { head: '5xx ≠ 503', get: c => c.server_errors },
  { head: 's to ready', get: c => c.seconds_to_ready === null ? '—' : c.seconds_to_ready.toFixed(1) }
]

/** The bad counts that are not zero, by name. */
export function failures (r: CaseResult): string[] {
  if (r.counters === null) return []
  const counters = r.counters
  return BAD.filter(k => (counters[k] as number) > 0).map(k => k.replace(/_/g, ' '))
}

export function verdict (r: CaseResult): string {
  if (r.error !== null) return `error: ${r.error.split('\n')[0].slice(0, 80)}`
  const bad = failures(r)
  return bad.length === 0 ? 'ok' : `FAIL: ${bad.join(', ')}`
}

export function passed (r: CaseResult): boolean {
  return r.error === null && r.counters !== null && failures(r).length === 0
}

export function markdownTable (results: CaseResult[]): string {
  const head = ['case', ...COLUMNS.map(c => c.head), 'result']
  const rows = results.map(r => [
    r.id,
    ...COLUMNS.map(c => r.counters === null ? '—' : String(c.get(r.counters, r) ?? '—')),
    verdict(r)
  ])
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map(row => row[i].length)))
  // Text columns (the first and the last) left-aligned, counts right-aligned.
  const text = (i: number) => i === 0 || i === head.length - 1
  const pad = (c: string, i: number) => text(i) ? c.padEnd(widths[i]) : c.padStart(widths[i])
  const line = (cells: string[]) => `| ${cells.map(pad).join(' | ')} |`
  const rule = `|${widths.map((w, i) => text(i) ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`).join('|')}|`
  return [line(head), rule, ...rows.map(line)].join('\n')
}
