/**
 * Bounded mixed load, as a good client sends it: `ratePerSec` creates for `durationMs` across the callers, each with
 * its own Idempotency-Key (also used as the prompt, so upstream tasks map back to requests). A create answered 503,
 * 409, 5xx, a connection error or a timeout is retried with the same key and body (bounded attempts, backoff,
 * Retry-After honoured up to the cap), as a client that wants exactly one task would. Beside it: a few cancels
 * shortly after a 202, and status reads. Every loop is bounded in count and in time; loopback only.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { Pool } from 'undici'

export interface CallerCreds { name: string, key: string }

export interface LoadSpec {
  origin: string
  callers: CallerCreds[]
  ratePerSec: number
  durationMs: number
  /** Makes keys unique per run. */
  keyPrefix: string
  /** Share of accepted tasks canceled 0–200 ms after their 202. */
  cancelRatio: number
  readsPerSec: number
  maxAttempts: number
  attemptTimeoutMs: number
  /** Time one create may take, retries included. */
  requestBudgetMs: number
  signal: AbortSignal
}

export type AttemptStatus = number | 'error' | 'timeout'

export interface CreateOutcome {
  key: string
  caller: string
  startedAt: number
  attempts: Array<{ at: number, status: AttemptStatus, code?: string, ms: number }>
  /** Distinct task ids answered with 202 for this key, in order: more than one is a duplicate. */
  taskIds: string[]
  final: 'accepted' | 'gave-up' | 'rejected' | 'aborted'
}

export interface ServerError { at: number, route: string, status: number, code?: string }

export interface LoadResult {
  creates: CreateOutcome[]
  cancels: Record<string, number>
  reads: Record<string, number>
  /** 5xx answers other than 503 (the one a client is told to retry). */
  serverErrors: ServerError[]
  /** Every create attempt's answer, by status. */
  createStatuses: Record<string, number>
}

const IMAGES = [{ image: 'https://example.com/a.png' }, { image: 'https://example.com/b.png' }]
const BACKOFF_CAP_MS = 2000

export function createBody (key: string): string {
  return JSON.stringify({ image_list: IMAGES, prompt: key })
}

function bump (counts: Record<string, number>, key: string | number): void {
  counts[String(key)] = (counts[String(key)] ?? 0) + 1
}

export async function runLoad (spec: LoadSpec): Promise<LoadResult> {
  const pool = new Pool(spec.origin, { connections: 64, pipelining: 1 })
  const result: LoadResult = { creates: [], cancels: {}, reads: {}, serverErrors: [], createStatuses: {} }
  const accepted: Array<{ id: string, caller: CallerCreds }> = []
  const cancels: Array<Promise<void>> = []
  const total = Math.max(1, Math.round(spec.ratePerSec * spec.durationMs / 1000))
  const t0 = Date.now()
  const auth = (c: CallerCreds) => ({ authorization: `Bearer ${c.key}` })

  const send = async (method: 'GET' | 'POST', path: string, headers: Record<string, string>, body?: string) => {
    const started = Date.now()
    try {
      const res = await pool.request({
        method,
        path,
        headers: body === undefined ? headers : { ...headers, 'content-type': 'application/json' },
        body,
        headersTimeout: spec.attemptTimeoutMs,
        bodyTimeout: spec.attemptTimeoutMs,
        signal: spec.signal
      })
      const text = await res.body.text()
      let json: Record<string, unknown> = {}
      try { json = JSON.parse(text) as Record<string, unknown> } catch {}
      const retryAfter = Number(res.headers['retry-after'])
      return { status: res.statusCode as AttemptStatus, json, retryAfter, ms: Date.now() - started }
    } catch (err) {
      const name = (err as Error).name
      const status: AttemptStatus = name === 'HeadersTimeoutError' || name === 'BodyTimeoutError' ? 'timeout' : 'error'
      return { status, json: {} as Record<string, unknown>, retryAfter: NaN, ms: Date.now() - started }
    }
  }

  const noteServerError = (route: string, status: AttemptStatus, json: Record<string, unknown>) => {
    if (typeof status === 'number' && status >= 500 && status !== 503) {
      const code = typeof json.code === 'string' ? json.code : undefined
      result.serverErrors.push({ at: Date.now() - t0, route, status, code })
    }
  }

  const cancel = async (id: string, caller: CallerCreds) => {
    await sleep(Math.random() * 200, undefined, { signal: spec.signal }).catch(() => {})
    if (spec.signal.aborted) return
    const r = await send('POST', `/v1/videos/${id}/cancel`, auth(caller))
    bump(result.cancels, r.status)
    noteServerError('cancel', r.status, r.json)
  }

  const create = async (i: number): Promise<void> => {
    const caller = spec.callers[i % spec.callers.length]
    const key = `${spec.keyPrefix}-${caller.name}-${String(i).padStart(5, '0')}`
    const out: CreateOutcome = {
      key, caller: caller.name, startedAt: Date.now() - t0, attempts: [], taskIds: [], final: 'gave-up'
    }
    result.creates.push(out)
    const deadline = Date.now() + spec.requestBudgetMs
    const body = createBody(key)
    for (let attempt = 1; attempt <= spec.maxAttempts; attempt++) {
      if (spec.signal.aborted) { out.final = 'aborted'; return }
      const r = await send('POST', '/v1/videos', { ...auth(caller), 'idempotency-key': key }, body)
      const code = typeof r.json.code === 'string' ? r.json.code : undefined
      out.attempts.push({ at: Date.now() - t0, status: r.status, code, ms: r.ms })
      bump(result.createStatuses, r.status)
      noteServerError('create', r.status, r.json)
      if (r.status === 202 && typeof r.json.id === 'string') {
        if (!out.taskIds.includes(r.json.id)) out.taskIds.push(r.json.id)
        out.final = 'accepted'
        if (out.taskIds.length === 1) {
          accepted.push({ id: r.json.id, caller })
          if (Math.random() < spec.cancelRatio) cancels.push(cancel(r.json.id, caller))
        }
        return
      }
      const retryable = r.status === 'error' || r.status === 'timeout' || r.status === 409 ||
        (typeof r.status === 'number' && r.status >= 500)
      if (!retryable) { out.final = 'rejected'; return }
      const backoff = Math.min(BACKOFF_CAP_MS, 200 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2)
      const asked = Number.isFinite(r.retryAfter) ? r.retryAfter * 1000 : 0
      const wait = Math.min(BACKOFF_CAP_MS, Math.max(backoff, asked))
      if (Date.now() + wait > deadline) return
      await sleep(wait, undefined, { signal: spec.signal }).catch(() => {})
    }
  }

  const reader = async () => {
    const every = 1000 / spec.readsPerSec
    const end = t0 + spec.durationMs
    while (Date.now() < end && !spec.signal.aborted) {
      await sleep(every, undefined, { signal: spec.signal }).catch(() => {})
      const pick = accepted[Math.floor(Math.random() * accepted.length)]
      if (pick === undefined) continue
      // One read in five is a list, the rest a single task.
      const path = Math.random() < 0.2 ? '/v1/videos?limit=5' : `/v1/videos/${pick.id}`
      const r = await send('GET', path, auth(pick.caller))
      bump(result.reads, r.status)
      noteServerError(path.includes('?') ? 'list' : 'get', r.status, r.json)
    }
  }

  try {
    const running: Array<Promise<void>> = [spec.readsPerSec > 0 ? reader() : Promise.resolve()]
    for (let i = 0; i < total && !spec.signal.aborted; i++) {
      const at = t0 + i * 1000 / spec.ratePerSec
      if (at > Date.now()) await sleep(at - Date.now(), undefined, { signal: spec.signal }).catch(() => {})
      running.push(create(i))
    }
    await Promise.all(running)
    await Promise.all(cancels)
  } finally {
    await pool.close().catch(() => {})
  }
  return result
}
