/**
 * What every check shares: the options, the HTTP client, the replay of answers to the adapter, the scrubber, the
 * spending budget, and the findings. A finding is one line of the report plus its evidence.
 */
import { randomInt } from 'node:crypto'
import type { Exchange, ProbeHttp } from './http.ts'
import type { Reading, Replay } from './replay.ts'
import type { Scrubber } from './scrub.ts'
import { CREATE_SPEC } from './catalog.ts'

export type Verdict = 'confirmed' | 'contradicted' | 'inconclusive'

export interface Evidence {
  title: string
  exchange?: Exchange
  /** For an exchange with another origin (a result URL): the URL, shown without its signature. */
  url?: string
  reading?: Reading
  lines?: string[]
}

export interface Finding {
  check: string
  verdict: Verdict
  /** One line of evidence for the report line. */
  summary: string
  evidence: Evidence[]
}

export interface Options {
  baseUrl: string
  key: string
  checks: string[]
  /** The most creates this run may make (0: none). */
  yesSpend: number
  json: boolean
  /** Where CometAPI sends callbacks (`local`: a loopback receiver of our own), or none. */
  receiver: string | null
  receiverPort: number | null
  pollIntervalMs: number
  pollTimeoutMs: number
  callbackWaitMs: number
  timeoutMs: number
  otherModel: string
  burst: number
}

/** Creates the run may still make; every create attempt takes one, whether or not CometAPI accepts it. */
export class Budget {
  made = 0
  constructor (readonly allowed: number) {}

  take (): boolean {
    if (this.made >= this.allowed) return false
    this.made++
    return true
  }
}

export interface Ctx {
  opts: Options
  http: ProbeHttp
  replay: Replay
  scrubber: Scrubber
  budget: Budget
  findings: Finding[]
  /** Aborted on Ctrl-C: waits end early and the report is made of what was seen. */
  signal: AbortSignal
  /** Progress on stderr, scrubbed. */
  log: (message: string) => void
}

export const CREATE_PATH = `/kling/v1/videos/${CREATE_SPEC.kind}`

export function queryPath (id: string): string {
  return `${CREATE_PATH}/${encodeURIComponent(id)}`
}

export function auth (ctx: Ctx, key = ctx.opts.key): Record<string, string> {
  return { authorization: `Bearer ${key}` }
}

export function wants (ctx: Ctx, id: string): boolean {
  return ctx.opts.checks.includes(id)
}

/** Records a finding of a selected check (a check not asked for is never reported, even if its data came free). */
export function record (ctx: Ctx, check: string, verdict: Verdict, summary: string, evidence: Evidence[] = []): void {
  if (!wants(ctx, check) || ctx.findings.some(f => f.check === check)) return
  ctx.findings.push({ check, verdict, summary, evidence })
}

/** An 18-digit numeric id no task has (Kling's ids are 18–19 digits starting 8): a lookup that must miss. */
export function unknownTaskId (): string {
  return `1${String(randomInt(0, 1e9)).padStart(9, '0')}${String(randomInt(0, 1e8)).padStart(8, '0')}`
}

/** What came back, in a few words: `HTTP 400 in 120 ms`, or the transport failure. */
export function answered (ex: Exchange): string {
  return ex.status === null ? `no answer (${ex.error ?? 'unknown'}) after ${ex.ms} ms` : `HTTP ${ex.status}`
}

type Obj = Record<string, unknown>
export const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v)

/** The error shape of a body: Kling's `{code: n}`, CometAPI's `{error: {…}}`, new-api's `{code: "…"}`, or other. */
export function errorShape (json: unknown): string {
  if (!isObj(json)) return json === undefined ? 'not JSON' : 'JSON, not an object'
  if (isObj(json.error)) {
    const code = json.error.code === undefined || json.error.code === '' ? 'no code' : `code ${String(json.error.code)}`
    const type = typeof json.error.type === 'string' ? `type ${json.error.type}, ` : ''
    return `CometAPI gateway shape {error: {…}} (${type}${code})`
  }
  if (typeof json.code === 'number' || (typeof json.code === 'string' && /^\d+$/.test(json.code))) {
    return `Kling envelope {code: ${String(json.code)}, message}`
  }
  if (typeof json.code === 'string') return `new-api task error {code: "${json.code}"}`
  return `another object (keys: ${Object.keys(json).slice(0, 8).join(', ')})`
}

export function message (json: unknown): string | null {
  if (!isObj(json)) return null
  if (isObj(json.error) && typeof json.error.message === 'string') return json.error.message
  return typeof json.message === 'string' ? json.message : null
}

/** Resolves after `ms`, or at once when `signal` is aborted. */
export async function sleep (ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted === true) return
  await new Promise<void>(resolve => {
    const done = () => { clearTimeout(timer); signal?.removeEventListener('abort', done); resolve() }
    const timer = setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
  })
}
