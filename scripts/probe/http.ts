/**
 * The probe's own HTTP: every answer kept whole (status, headers, the body bytes as sent), because the point is to
 * see the wire, not what a client makes of it. undici, one deadline per call, redirects never followed (as
 * src/upstream/client.ts: a 3xx is evidence, not a detour), bodies capped.
 */
import { Agent, type Dispatcher } from 'undici'

const MAX_BODY_BYTES = 1024 * 1024

/** One request and what came back; `error` instead of a status when no answer arrived. */
export interface Exchange {
  method: 'GET' | 'POST'
  /** The path and query as sent, under the base URL. */
  path: string
  status: number | null
  headers: Record<string, string>
  /** The body bytes (at most 1 MiB) and the same as UTF-8 text. */
  raw: Buffer
  text: string
  truncated: boolean
  /** Parsed JSON, or undefined when the body is not JSON. Big ids lose digits here: read `text` for their type. */
  json: unknown
  ms: number
  /** The transport failure (undici's or node's code), when there was no answer. */
  error: string | null
}

export interface HttpOptions { baseUrl: string, timeoutMs: number }

export class ProbeHttp {
  readonly origin: string
  readonly prefix: string
  readonly timeoutMs: number
  readonly #agent: Agent

  constructor (opts: HttpOptions) {
    const url = new URL(opts.baseUrl)
    this.origin = url.origin
    this.prefix = url.pathname.replace(/\/+$/, '')
    this.timeoutMs = opts.timeoutMs
    this.#agent = new Agent({ headersTimeout: opts.timeoutMs, bodyTimeout: opts.timeoutMs, connections: 16 })
  }

  /** A request to `path` under the base URL with `headers`; never throws: a failure is an Exchange with `error`. */
  async send (method: 'GET' | 'POST', path: string, headers: Record<string, string>, body?: string):
  Promise<Exchange> {
    const started = Date.now()
    const all: Record<string, string> = { accept: 'application/json', 'user-agent': 'kling-gateway-probe', ...headers }
    if (body !== undefined) all['content-type'] = 'application/json'
    try {
      const res = await this.#agent.request({
        origin: this.origin,
        path: this.prefix + path,
        method,
        headers: all,
        body,
        signal: AbortSignal.timeout(this.timeoutMs)
      })
      return await received(method, path, res, started)
    } catch (err) {
      return failed(method, path, err, started)
    }
  }

  async close (): Promise<void> {
    await this.#agent.close()
  }
}

/** Reads an answer into an Exchange. */
export async function received (method: 'GET' | 'POST', path: string, res: Dispatcher.ResponseData, started: number):
Promise<Exchange> {
  const chunks: Buffer[] = []
  let size = 0
  let truncated = false
  for await (const chunk of res.body) {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array)
    if (size + buf.length > MAX_BODY_BYTES) {
      chunks.push(buf.subarray(0, MAX_BODY_BYTES - size))
      truncated = true
      res.body.on('error', () => {})
      res.body.destroy()
      break
    }
    size += buf.length
    chunks.push(buf)
  }
  const raw = Buffer.concat(chunks)
  const text = raw.toString('utf8')
  let json: unknown
  try { json = JSON.parse(text) } catch { json = undefined }
  return {
    method,
    path,
    status: res.statusCode,
    headers: flatHeaders(res.headers),
    raw,
    text,
    truncated,
    json,
    ms: Date.now() - started,
    error: null
  }
}

export function failed (method: 'GET' | 'POST', path: string, err: unknown, started: number): Exchange {
  return {
    method,
    path,
    status: null,
    headers: {},
    raw: Buffer.alloc(0),
    text: '',
    truncated: false,
    json: undefined,
    ms: Date.now() - started,
    error: errorCode(err)
  }
}

function errorCode (err: unknown): string {
  let cur: unknown = err
  for (let i = 0; i < 4 && typeof cur === 'object' && cur !== null; i++) {
    const e = cur as { code?: unknown, name?: unknown, cause?: unknown }
    if (typeof e.code === 'string' && e.code !== '') return e.code
    if (e.name === 'TimeoutError' || e.name === 'AbortError') return e.name
    cur = e.cause
  }
  return err instanceof Error ? err.name : 'unknown error'
}

/** Headers as one lower-case name → one string; `set-cookie` is dropped (a session is no evidence, and a secret). */
export function flatHeaders (headers: Dispatcher.ResponseData['headers']): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || name.toLowerCase() === 'set-cookie') continue
    out[name.toLowerCase()] = Array.isArray(value) ? value.join(', ') : String(value)
  }
  return out
}

/** The headers worth showing in a report: type, size, rate limits, request ids, retry and redirect hints. */
export function relevantHeaders (headers: Record<string, string>): Record<string, string> {
  const keep = /^(content-type|content-length|retry-after|location|server|via|date)$|ratelimit|request-?id|trace/i
  return Object.fromEntries(Object.entries(headers).filter(([name]) => keep.test(name)))
}
