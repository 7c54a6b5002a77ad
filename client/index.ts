/**
 * The typed client of kling-gateway: openapi-fetch over the types `npm run client` generates from
 * openapi/openapi.json, plus the three jobs callers actually do (create, wait, download) and the webhook check.
 * It depends on nothing of the server (src/), so it can be copied or published on its own.
 */
import createClient, { type Client } from 'openapi-fetch'
import { Webhook } from 'standardwebhooks'
import { randomUUID } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { readFile, rename, stat, unlink } from 'node:fs/promises'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { ReadableStream as WebReadableStream } from 'node:stream/web'
import type { components, paths } from './schema.d.ts'

export type { components, paths } from './schema.d.ts'
export type Task = components['schemas']['Task']
export type TaskEvent = components['schemas']['TaskEvent']
export type Problem = components['schemas']['Problem']
export type Delivery = components['schemas']['Delivery']
export type Kind = Task['kind']
export type CreateBody<K extends Kind> =
  NonNullable<paths[`/v1/videos/${K}`]['post']['requestBody']>['content']['application/json']

/** An image as a caller has it: a file path, the bytes, or an `https://` (or `data:`) URL sent as is. */
export type ImageInput = string | Buffer | Uint8Array

/** The short form of a create: images in order (multi-image: the list; image2video: image, then image_tail). */
export type CreateInput<K extends Kind> = Omit<CreateBody<K>, 'image_list' | 'image' | 'image_tail'> & {
  images?: ImageInput[]
}

export const TERMINAL: ReadonlySet<Task['status']> = new Set(['succeeded', 'failed', 'canceled'])

/** A problem+json answer of the gateway (RFC 9457): branch on `code`, show `detail`. */
export class GatewayProblem extends Error {
  readonly status: number
  readonly code: string
  readonly problem: Problem
  /** Seconds, from `Retry-After`, when the gateway sent one. */
  readonly retryAfter?: number

  constructor (status: number, problem: Problem, retryAfter?: number) {
    super(`${problem.code}: ${problem.detail}`)
    this.name = 'GatewayProblem'
    this.status = status
    this.code = problem.code
    this.problem = problem
    if (retryAfter !== undefined) this.retryAfter = retryAfter
  }
}

/** The gateway could not be reached (refused, reset, DNS): nothing is known about the request's effect. */
export class GatewayUnreachable extends Error {
  constructor (cause: unknown) {
    super(`gateway unreachable: ${cause instanceof Error ? cause.message : String(cause)}`, { cause })
    this.name = 'GatewayUnreachable'
  }
}

/** `wait` or `download` ran out of `timeoutMs`. */
export class GatewayTimeout extends Error {
  constructor (what: string, ms: number) {
    super(`${what} did not finish within ${ms} ms`)
    this.name = 'GatewayTimeout'
  }
}

export interface ClientOptions {
  /** The gateway's base URL, e.g. `http://127.0.0.1:3000`. */
  url: string
  key: string
  /** Another fetch (tests, proxies); the global one by default. */
  fetch?: typeof globalThis.fetch
}

export interface CreateOptions {
  /** Generated (a UUID) when not given, so that the retries below are safe; pass your own to retry across runs. */
  idempotencyKey?: string
  /** Attempts on 503, 5xx and network errors with the same key and body (default 4; 1 = no retry). */
  attempts?: number
  signal?: AbortSignal
}

export interface WaitUpdate {
  /** How this update arrived: an SSE event, or a poll of the task after SSE was refused or kept failing. */
  via: 'sse' | 'poll'
  task: Task
  event?: TaskEvent
}

export interface WaitOptions {
  onEvent?: (update: WaitUpdate) => void
  signal?: AbortSignal
  /** Give up after this long (default 30 minutes). */
  timeoutMs?: number
  /** Resume after this event id (a previous wait's `lastEventId`). */
  lastEventId?: string
  /** Poll interval once SSE is given up (default 2000 ms). */
  pollIntervalMs?: number
  /** `false`: poll only. */
  sse?: boolean
}

export interface DownloadOptions {
  index?: number
  signal?: AbortSignal
  /** How long to wait for the gateway's copy to be ready (409 CONTENT_NOT_READY; default 120 s). */
  timeoutMs?: number
}

const sleep = async (ms: number, signal?: AbortSignal) => await new Promise<void>((resolve, reject) => {
  if (signal?.aborted === true) { reject(signal.reason); return }
  const t = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve() }, ms)
  const onAbort = () => { clearTimeout(t); reject(signal?.reason) }
  signal?.addEventListener('abort', onAbort, { once: true })
})

/** A problem from any non-2xx answer; a body that is not problem+json (a proxy's page) still gets one. */
function toProblem (response: Response, body: unknown): GatewayProblem {
  const retry = Number(response.headers.get('retry-after') ?? NaN)
  const p = body as Partial<Problem> | undefined
  const problem: Problem = typeof p === 'object' && p !== null && typeof p.code === 'string'
    ? p as Problem
    : {
        type: 'about:blank',
        title: response.statusText,
        status: response.status,
        code: response.status >= 500 ? 'UNAVAILABLE' : 'HTTP_' + response.status,
        detail: typeof body === 'string' && body !== '' ? body.slice(0, 200) : `HTTP ${response.status}`
      }
  return new GatewayProblem(response.status, problem, Number.isFinite(retry) ? retry : undefined)
}

/** Worth the same request again: 503 and other 5xx, 429 with Retry-After, or no answer at all. */
export const isTransient = (err: unknown): boolean =>
  err instanceof GatewayUnreachable ||
  (err instanceof GatewayProblem && (err.status >= 500 || (err.status === 429 && err.retryAfter !== undefined)))

async function imageToString (image: ImageInput): Promise<string> {
  if (typeof image !== 'string') return Buffer.from(image).toString('base64')
  if (/^(https?:|data:)/i.test(image)) return image
  return (await readFile(image)).toString('base64')
}

/** One SSE message; comments and `retry:` lines are handled by the reader. */
interface SseMessage { id?: string, event?: string, data: string }

/**
 * Reads an SSE body into messages (WHATWG rules: lines end in LF, CRLF or CR; a blank line ends a message; a
 * leading space after the colon is dropped). `onRetry` gets each `retry:` value.
 */
async function * readSse (body: WebReadableStream<Uint8Array>, onRetry: (ms: number) => void):
AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder()
  let buffer = ''
  let msg: { id?: string, event?: string, data: string[] } = { data: [] }
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true })
    const lines = buffer.split(/\r\n|\r|\n/)
    buffer = lines.pop() ?? ''
    for (const line of lines) {
      if (line === '') {
        if (msg.data.length > 0) yield { id: msg.id, event: msg.event, data: msg.data.join('\n') }
        msg = { data: [] }
        continue
      }
      if (line.startsWith(':')) continue
      const colon = line.indexOf(':')
      const field = colon < 0 ? line : line.slice(0, colon)
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
      if (field === 'data') msg.data.push(value)
      else if (field === 'id') msg.id = value
      else if (field === 'event') msg.event = value
      else if (field === 'retry' && /^\d+$/.test(value)) onRetry(Number(value))
    }
  }
}

export type GatewayClient = ReturnType<typeof createGatewayClient>

export function createGatewayClient (opts: ClientOptions) {
  const baseUrl = opts.url.replace(/\/+$/, '')
  const fetchImpl = opts.fetch ?? globalThis.fetch
  const authorization = `Bearer ${opts.key}`
  // Network failures become GatewayUnreachable (never the key: fetch errors do not carry request headers).
  const guardedFetch: typeof fetch = async (input, init) => {
    try {
      return await fetchImpl(input, init)
    } catch (err) {
      if ((err as Error).name === 'AbortError' || (err as Error).name === 'TimeoutError') throw err
      throw new GatewayUnreachable(err)
    }
  }
  const api: Client<paths> = createClient<paths>({ baseUrl, headers: { authorization }, fetch: guardedFetch })

  /** The data of a typed call, or its problem thrown. */
  async function unwrap<T> (call: Promise<{ data?: T, error?: unknown, response: Response }>): Promise<T> {
    const { data, error, response } = await call
    if (!response.ok) throw toProblem(response, error)
    return data as T
  }

  const getTask = async (id: string, signal?: AbortSignal): Promise<Task> =>
    await unwrap(api.GET('/v1/videos/{id}', { params: { path: { id } }, signal }))

  /** The body of a create from the short form, images read and Base64'd; a full body goes as it is. */
  async function buildBody<K extends Kind> (kind: K, input: CreateInput<K> | CreateBody<K>): Promise<CreateBody<K>> {
    const { images, ...rest } = input as CreateInput<K>
    if (images === undefined) return rest as CreateBody<K>
    const encoded = await Promise.all(images.map(imageToString))
    if (kind === 'multi-image2video') return { ...rest, image_list: encoded.map(image => ({ image })) } as CreateBody<K>
    if (kind === 'image2video') {
      if (encoded.length < 1 || encoded.length > 2) throw new TypeError('image2video takes 1 or 2 images')
      const [image, tail] = encoded
      return { ...rest, image, ...(tail === undefined ? {} : { image_tail: tail }) } as CreateBody<K>
    }
    if (encoded.length > 0) throw new TypeError('text2video takes no images')
    return rest as CreateBody<K>
  }

  /**
   * Creates a task. An Idempotency-Key is always sent (generated unless given), so a 503 or a lost answer is
   * retried with the same key and body and can never make a second, paid task.
   */
  async function create<K extends Kind> (kind: K, input: CreateInput<K> | CreateBody<K>, options: CreateOptions = {}):
  Promise<Task & { replayed: boolean }> {
    const body = await buildBody(kind, input)
    const key = options.idempotencyKey ?? randomUUID()
    const attempts = Math.max(1, Math.min(options.attempts ?? 4, 20))
    for (let attempt = 1; ; attempt++) {
      try {
        const { data, error, response } = await api.POST(`/v1/videos/${kind}` as '/v1/videos/multi-image2video', {
          body: body as CreateBody<'multi-image2video'>,
          params: { header: { 'idempotency-key': key } },
          signal: options.signal
        })
        if (!response.ok) throw toProblem(response, error)
        return { ...(data as Task), replayed: response.headers.get('idempotent-replayed') === 'true' }
      } catch (err) {
        if (attempt >= attempts || !isTransient(err)) throw err
        const hinted = err instanceof GatewayProblem && err.retryAfter !== undefined ? err.retryAfter * 1000 : 0
        await sleep(Math.min(Math.max(hinted, 250 * 2 ** (attempt - 1)), 10_000), options.signal)
      }
    }
  }

  /**
   * The task's events over SSE (fetch streaming, so the key goes in a header), from after `lastEventId` (else
   * from the first), reconnecting with Last-Event-ID after a cut; it ends when the task has had its last event
   * (the stream ends and a reconnect answers 204). A refusal (429 over `max_sse_streams`, 4xx, 5xx) is thrown as
   * a GatewayProblem; three connects in a row that bring no event throw the last error (GatewayUnreachable).
   */
  async function * events (id: string, options: { lastEventId?: string, signal?: AbortSignal } = {}):
  AsyncGenerator<TaskEvent> {
    let lastEventId = options.lastEventId
    let failures = 0
    let retryMs = 2000
    let lastError: unknown
    // Bounded: each turn ends the stream, counts a failure (three end it), or brought new events.
    for (let turn = 0; turn < 100_000; turn++) {
      if (failures >= 3) throw lastError ?? new GatewayUnreachable('the event stream kept ending without events')
      if (turn > 0) await sleep(Math.min(retryMs, 5000), options.signal)
      const headers: Record<string, string> = { authorization, accept: 'text/event-stream' }
      if (lastEventId !== undefined) headers['last-event-id'] = lastEventId
      let response: Response
      try {
        const url = `${baseUrl}/v1/videos/${encodeURIComponent(id)}/events`
        response = await guardedFetch(url, { headers, signal: options.signal })
      } catch (err) {
        if (!(err instanceof GatewayUnreachable)) throw err
        lastError = err
        failures++
        continue
      }
      // 204: the task has had its last event and this reader has seen them all.
      if (response.status === 204) return
      if (!response.ok || response.body === null) {
        const text = await response.text().catch(() => '')
        let body: unknown = text
        try { body = JSON.parse(text) } catch {}
        throw toProblem(response, body)
      }
      const stream = response.body as WebReadableStream<Uint8Array>
      let progressed = false
      try {
        for await (const msg of readSse(stream, ms => { retryMs = ms })) {
          if (msg.id !== undefined) lastEventId = msg.id
          progressed = true
          yield JSON.parse(msg.data) as TaskEvent
        }
      } catch (err) {
        if (options.signal?.aborted === true) throw err
        lastError = new GatewayUnreachable(err)
      } finally {
        // Also when the consumer stops early: the stream's place (max_sse_streams) is freed at once.
        await stream.cancel().catch(() => {})
      }
      failures = progressed ? 0 : failures + 1
    }
  }

  /**
   * Waits until the task is terminal (succeeded, failed, canceled) and returns it, with the last event id seen
   * (pass it as `lastEventId` to resume in another process). Follows `events`; when SSE is refused (429 over
   * `max_sse_streams`, a 5xx, a proxy that breaks streaming) or keeps failing, it polls the task instead.
   */
  async function wait (id: string, options: WaitOptions = {}): Promise<Task & { lastEventId?: string }> {
    const timeoutMs = options.timeoutMs ?? 30 * 60_000
    const timer = AbortSignal.timeout(timeoutMs)
    const signal = options.signal === undefined ? timer : AbortSignal.any([options.signal, timer])
    let lastEventId = options.lastEventId
    const done = (task: Task) => ({ ...task, ...(lastEventId === undefined ? {} : { lastEventId }) })
    try {
      if (options.sse !== false) {
        try {
          for await (const event of events(id, { lastEventId, signal })) {
            lastEventId = event.id
            options.onEvent?.({ via: 'sse', task: event.data, event })
            if (TERMINAL.has(event.data.status)) return done(event.data)
          }
          // The stream ended for good before a terminal event reached us (all seen before): the task is final.
          return done(await getTask(id, signal))
        } catch (err) {
          if (signal.aborted) throw err
          // 404, 401, 400 are answers about the task or the key: polling would only say the same.
          if (err instanceof GatewayProblem && err.status < 500 && err.status !== 429) throw err
        }
      }
      return done(await poll(id, options, signal))
    } catch (err) {
      if (timer.aborted && options.signal?.aborted !== true) throw new GatewayTimeout('wait', timeoutMs)
      throw err
    }
  }

  async function poll (id: string, options: WaitOptions, signal: AbortSignal): Promise<Task> {
    const interval = Math.max(100, options.pollIntervalMs ?? 2000)
    let seen = -1
    // Bounded by `signal` (the wait's timeout) and by this many polls.
    for (let i = 0; i < 1_000_000; i++) {
      try {
        const task = await getTask(id, signal)
        if (task.sequence !== seen) {
          seen = task.sequence
          options.onEvent?.({ via: 'poll', task })
        }
        if (TERMINAL.has(task.status)) return task
      } catch (err) {
        if (!isTransient(err)) throw err
      }
      await sleep(interval, signal)
    }
    throw new GatewayTimeout('wait', options.timeoutMs ?? 0)
  }

  /**
   * Streams a result video to `dest` (through `dest.part`, renamed when complete). A `.part` left by a cut
   * download is continued with a Range request. Waits, within `timeoutMs`, while the gateway's copy is not ready.
   */
  async function download (id: string, dest: string, options: DownloadOptions = {}):
  Promise<{ path: string, bytes: number }> {
    const timeoutMs = options.timeoutMs ?? 120_000
    const timer = AbortSignal.timeout(timeoutMs)
    const signal = options.signal === undefined ? timer : AbortSignal.any([options.signal, timer])
    const part = `${dest}.part`
    try {
      for (let i = 0; i < 10_000; i++) {
        const have = await stat(part).then(s => s.size, () => 0)
        const headers: Record<string, string> = have > 0 ? { range: `bytes=${have}-` } : {}
        const { error, response } = await api.GET('/v1/videos/{id}/content', {
          params: { path: { id }, query: options.index === undefined ? {} : { index: options.index } },
          headers,
          parseAs: 'stream',
          signal
        })
        if (response.status === 416 && have > 0) {
          // The part is already whole (or longer than the video): keep it only when its size is the video's.
          const size = Number(/\/(\d+)$/.exec(response.headers.get('content-range') ?? '')?.[1] ?? NaN)
          if (size === have) break
          await unlink(part)
          continue
        }
        if (!response.ok) {
          const problem = toProblem(response, error)
          if (problem.code === 'CONTENT_NOT_READY' && await untilStored(id, signal)) continue
          if (problem.code === 'CONTENT_NOT_READY' || isTransient(problem)) {
            await sleep(Math.min((problem.retryAfter ?? 2) * 1000, 10_000), signal)
            continue
          }
          throw problem
        }
        const append = response.status === 206
        const body = Readable.fromWeb(response.body as WebReadableStream<Uint8Array>)
        await pipeline(body, createWriteStream(part, { flags: append ? 'a' : 'w' }), { signal })
        break
      }
    } catch (err) {
      if (timer.aborted && options.signal?.aborted !== true) throw new GatewayTimeout('download', timeoutMs)
      throw err
    }
    await rename(part, dest)
    return { path: dest, bytes: (await stat(dest)).size }
  }

  /**
   * While the copy is being made, the task's stream says when it is there (`video.stored`, or `video.copy_failed`)
   * sooner than Retry-After polling would. False when the stream could not be followed (then poll).
   */
  async function untilStored (id: string, signal: AbortSignal): Promise<boolean> {
    try {
      for await (const e of events(id, { signal })) {
        if (e.type === 'video.stored' || e.type === 'video.copy_failed') break
      }
      return true
    } catch (err) {
      if (signal.aborted) throw err
      return false
    }
  }

  return {
    /** The typed openapi-fetch client: every operation of openapi/openapi.json, authorized. */
    api,
    /** `await unwrap(api.GET(…))`: the data, or the GatewayProblem thrown. */
    unwrap,
    get: getTask,
    create,
    events,
    wait,
    download
  }
}

export interface WebhookPayload { type: TaskEvent['type'], timestamp: string, data: Task }

/**
 * Checks a delivery's Standard Webhooks signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`, with
 * the 5-minute tolerance) against the endpoint's `whsec_…` secret, on the body exactly as received; returns the
 * parsed payload, or throws standardwebhooks' WebhookVerificationError.
 */
export function verifyWebhook (secret: string, headers: Headers | Record<string, string | string[] | undefined>,
  body: string | Buffer): WebhookPayload {
  const flat: Record<string, string> = {}
  if (headers instanceof Headers) headers.forEach((v, k) => { flat[k] = v })
  else {
    for (const [k, v] of Object.entries(headers)) {
      if (v !== undefined) flat[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : v
    }
  }
  return new Webhook(secret).verify(typeof body === 'string' ? body : body.toString('utf8'), flat) as WebhookPayload
}
