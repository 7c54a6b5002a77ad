// The gateway's /v1 API as the page uses it: every call carries the key in the Authorization header, so nothing
// secret is ever in a URL (EventSource cannot set headers, hence SSE read from fetch() below).

const STORE = 'kg-dashboard-key'

export const key = {
  get: () => sessionStorage.getItem(STORE),
  set: (value) => sessionStorage.setItem(STORE, value),
  clear: () => sessionStorage.removeItem(STORE)
}

/** A problem+json answer (or a network failure, status 0), with the gateway's stable `code`. */
export class ApiError extends Error {
  constructor (status, problem) {
    super(problem?.detail ?? problem?.title ?? `HTTP ${status}`)
    this.status = status
    this.code = problem?.code ?? null
    this.retryAfter = problem?.retryAfter ?? null
  }
}

function headers (extra = {}) {
  return { authorization: `Bearer ${key.get() ?? ''}`, ...extra }
}

async function fail (res) {
  let problem = null
  try { problem = await res.json() } catch { /* not JSON: the status says enough */ }
  const retryAfter = Number(res.headers.get('retry-after'))
  throw new ApiError(res.status, { ...problem, retryAfter: Number.isFinite(retryAfter) ? retryAfter : null })
}

/** JSON in, JSON out; null for a 204. */
export async function api (path, { method = 'GET', body, signal } = {}) {
  const type = body === undefined ? {} : { 'content-type': 'application/json' }
  const init = { method, signal, headers: headers(type) }
  if (body !== undefined) init.body = JSON.stringify(body)
  const res = await fetch(path, init)
  if (!res.ok) await fail(res)
  return res.status === 204 ? null : await res.json()
}

/** Routes without a key (readiness, metrics), read as they are. */
export async function plain (path, signal) {
  const res = await fetch(path, { signal })
  return { status: res.status, type: res.headers.get('content-type') ?? '', text: await res.text() }
}

/** A video (or any body) as a Blob, fetched with the key: `<video>` cannot send the header itself. */
export async function blob (path, signal) {
  const res = await fetch(path, { headers: headers(), signal })
  if (!res.ok) await fail(res)
  return await res.blob()
}

const MAX_EVENT_BYTES = 4 * 1024 * 1024

/**
 * One task's events over SSE, read from a fetch() body. Yields each event (docs/API.md, "Events") until the
 * stream ends or `signal` aborts; a 204 (nothing more will ever come) yields nothing. A message larger than
 * MAX_EVENT_BYTES ends the stream rather than growing the buffer for ever.
 */
export async function * events (taskId, { lastEventId, signal } = {}) {
  const extra = { accept: 'text/event-stream' }
  if (lastEventId) extra['last-event-id'] = lastEventId
  const res = await fetch(`/v1/videos/${encodeURIComponent(taskId)}/events`, { headers: headers(extra), signal })
  if (res.status === 204) return
  if (!res.ok) await fail(res)
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
  let buffer = ''
  try {
    for (;;) {
      const { value, done } = await reader.read()
      if (done) return
      buffer += value
      if (buffer.length > MAX_EVENT_BYTES) throw new ApiError(0, { detail: 'an event larger than the page reads' })
      let end
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end)
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '')
        const message = parse(block)
        if (message !== null) yield message
      }
    }
  } finally {
    reader.cancel().catch(() => {})
  }
}

/**
 * One SSE block's `data:` lines: the event JSON, which carries its own `id` and `type` (the `id:` and `event:`
 * lines say the same). Comments (`: ping`) and `retry:` are not messages.
 */
function parse (block) {
  const data = []
  for (const line of block.split(/\r?\n/)) {
    const m = /^data: ?(.*)$/.exec(line)
    if (m !== null) data.push(m[1])
  }
  return data.length === 0 ? null : JSON.parse(data.join('\n'))
}
