/**
 * The report (README, "Live probe", and docs/DESIGN.md, "The live probe"): a header (date, base URL host, probe
 * version, spend), one line per check, then the evidence. Made to be pasted into an issue. Everything goes through
 * the run's scrubber last, so no secret survives even in a body upstream echoed back.
 */
import { CHECKS, PROBE_VERSION, spec } from './catalog.ts'
import type { Evidence, Finding, Verdict } from './context.ts'
import { relevantHeaders } from './http.ts'
import { describeReading } from './replay.ts'
import { showBody, showUrl, type Scrubber } from './scrub.ts'

const MARK: Record<Verdict, string> = {
  confirmed: '✔ confirmed',
  contradicted: '✘ contradicted',
  inconclusive: '? inconclusive'
}

/** `✔ confirmed — <check>: <assumption> — <evidence>`; the format README, "Live probe" documents. */
export const LINE = /^(✔ confirmed|✘ contradicted|\? inconclusive) — ([a-z][a-z-]*): (.+?) — (.+)$/

export interface Header {
  date: string
  baseUrlHost: string
  spend: { allowed: number, made: number, planned: number }
}

/** Findings in catalog order. */
function ordered (findings: Finding[]): Finding[] {
  const index = (id: string) => CHECKS.findIndex(c => c.id === id)
  return [...findings].sort((a, b) => index(a.check) - index(b.check))
}

const oneLine = (s: string): string => s.replace(/\s*\n\s*/g, ' ').trim()

export function summaryLine (f: Finding): string {
  return `${MARK[f.verdict]} — ${f.check}: ${spec(f.check).assumption} — ${oneLine(f.summary)}`
}

function evidenceText (e: Evidence): string[] {
  const ex = e.exchange
  // A title alone is a sentence (a pointer to another check's evidence), not a heading.
  const bare = ex === undefined && e.url === undefined && e.lines === undefined && e.reading === undefined
  if (bare) return [`${e.title}.`]
  const out = [`${e.title}:`]
  const fence = '```'
  if (ex !== undefined) {
    const target = e.url !== undefined ? showUrl(e.url) : ex.path
    const status = ex.status === null ? `no answer (${ex.error ?? '?'})` : `${ex.status}`
    out.push(fence, `${ex.method} ${target} → ${status} in ${ex.ms} ms`)
    for (const [k, v] of Object.entries(relevantHeaders(ex.headers))) out.push(`${k}: ${v}`)
    if (ex.text !== '') out.push('', showBody(ex.text) + (ex.truncated ? ' [body cut at 1 MiB]' : ''))
    out.push(fence)
  } else if (e.url !== undefined) {
    out.push(fence, showUrl(e.url), fence)
  }
  if (e.lines !== undefined) out.push(fence, ...e.lines, fence)
  if (e.reading !== undefined) out.push(`What the gateway makes of it: ${describeReading(e.reading)}.`)
  return out
}

export function renderText (header: Header, findings: Finding[], scrubber: Scrubber): string {
  const all = ordered(findings)
  const counts = (v: Verdict) => all.filter(f => f.verdict === v).length
  const { allowed, made, planned } = header.spend
  const lines = [
    '## kling-gateway live probe',
    '',
    `date: ${header.date}`,
    `base URL host: ${header.baseUrlHost}`,
    `probe version: ${PROBE_VERSION}`,
    `spend: ${made} create${made === 1 ? '' : 's'} sent (--yes-spend ${allowed}; ` +
      `the checks asked for make at most ${planned})`,
    `result: ${counts('confirmed')} confirmed, ${counts('contradicted')} contradicted, ` +
      `${counts('inconclusive')} inconclusive`,
    '',
    ...all.map(summaryLine),
    '',
    '### Evidence'
  ]
  for (const f of all) {
    const s = spec(f.check)
    // Only the summary lines start with a verdict mark, so a reader (or a script) finds them by it.
    lines.push('', `#### ${f.check}`, '', `Assumption: ${s.assumption}.`, `Verdict: ${MARK[f.verdict]}.`,
      `Relied on by: ${s.reliesOn.join('; ')}.`, `Evidence: ${oneLine(f.summary)}`)
    for (const e of f.evidence) lines.push('', ...evidenceText(e))
  }
  return scrubber.scrub(lines.join('\n')) + '\n'
}

export function renderJson (header: Header, findings: Finding[], scrubber: Scrubber): string {
  const results = ordered(findings).map(f => ({
    check: f.check,
    verdict: f.verdict,
    assumption: spec(f.check).assumption,
    reliesOn: spec(f.check).reliesOn,
    evidence: oneLine(f.summary),
    details: f.evidence.map(e => ({
      title: e.title,
      ...(e.url !== undefined && { url: showUrl(e.url) }),
      ...(e.exchange !== undefined && {
        request: `${e.exchange.method} ${e.url !== undefined ? showUrl(e.url) : e.exchange.path}`,
        status: e.exchange.status,
        error: e.exchange.error,
        ms: e.exchange.ms,
        headers: e.exchange.headers,
        body: showBody(e.exchange.text)
      }),
      ...(e.reading !== undefined && { reading: describeReading(e.reading) }),
      ...(e.lines !== undefined && { lines: e.lines })
    }))
  }))
  const doc = { probe: { version: PROBE_VERSION, ...header }, results }
  return scrubber.scrub(JSON.stringify(doc, null, 2)) + '\n'
}
