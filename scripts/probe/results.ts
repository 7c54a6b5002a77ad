/**
 * The result URL of a succeeded probe task: downloaded once as the copy job would (a plain GET, no redirect
 * followed), and read for when it expires.
 */
import { Agent, request } from 'undici'
import { record, wants, type Ctx, type Evidence } from './context.ts'
import { failed, flatHeaders, received, type Exchange } from './http.ts'
import { expiryParams, showUrl } from './scrub.ts'
import type { ProbeTask } from './tasks.ts'

/** MIRROR_MAX_BYTES's and MIRROR_TIMEOUT_MS's defaults: what the copy job takes. */
const MIRROR_MAX_BYTES = 256 * 1024 * 1024
const DOWNLOAD_TIMEOUT_MS = 300_000
const DAY_MS = 24 * 3600_000
const RETENTION_MS = 30 * DAY_MS

interface Download { exchange: Exchange, bytes: number, head: Buffer, over: boolean }

async function download (url: string): Promise<Download> {
  const agent = new Agent({ headersTimeout: 30_000, bodyTimeout: 60_000 })
  const started = Date.now()
  const path = new URL(url).pathname
  try {
    const res = await request(url, {
      dispatcher: agent,
      signal: AbortSignal.timeout(DOWNLOAD_TIMEOUT_MS),
      headers: { 'user-agent': 'kling-gateway-probe' }
    })
    if (res.statusCode !== 200) {
      return { exchange: await received('GET', path, res, started), bytes: 0, head: Buffer.alloc(0), over: false }
    }
    let bytes = 0
    let head = Buffer.alloc(0)
    let over = false
    for await (const chunk of res.body) {
      const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array)
      if (head.length < 16) head = Buffer.concat([head, buf]).subarray(0, 16)
      bytes += buf.length
      if (bytes > MIRROR_MAX_BYTES) { over = true; res.body.destroy(); break }
    }
    const exchange: Exchange = {
      method: 'GET',
      path,
      status: res.statusCode,
      headers: flatHeaders(res.headers),
      raw: Buffer.alloc(0),
      text: '',
      truncated: false,
      json: undefined,
      ms: Date.now() - started,
      error: null
    }
    return { exchange, bytes, head, over }
  } catch (err) {
    return { exchange: failed('GET', path, err, started), bytes: 0, head: Buffer.alloc(0), over: false }
  } finally {
    await agent.close()
  }
}

/** When a signed URL stops working, from its query string; null when nothing in it says. */
export function expiresAt (url: string): { at: number, from: string } | null {
  const p = Object.fromEntries(Object.entries(expiryParams(url)).map(([k, v]) => [k.toLowerCase(), v]))
  const stamp = (s: string | undefined): number | null => {
    const m = s === undefined ? null : /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s)
    return m === null ? null : Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6])
  }
  const num = (s: string | undefined) => s !== undefined && /^\d+$/.test(s) ? Number(s) : null
  for (const [exp, date] of [['x-oss-expires', 'x-oss-date'], ['x-amz-expires', 'x-amz-date'],
    ['x-goog-expires', 'x-goog-date']]) {
    const n = num(p[exp])
    if (n === null) continue
    const base = stamp(p[date])
    if (base !== null) return { at: base + n * 1000, from: `${exp}=${n} after ${date}=${p[date]}` }
    if (n > 1e9) return { at: n * 1000, from: `${exp}=${n} (Unix seconds)` }
  }
  const expires = num(p.expires)
  if (expires !== null && expires > 1e9) return { at: expires * 1000, from: `Expires=${expires} (Unix seconds)` }
  if (p.se !== undefined && !Number.isNaN(Date.parse(p.se))) return { at: Date.parse(p.se), from: `se=${p.se}` }
  return null
}

/** `download` and `url-expiry`, from the first succeeded task (the probe task, else the masks one). */
export async function checkResult (ctx: Ctx, tasks: ProbeTask[]): Promise<void> {
  if (!wants(ctx, 'download') && !wants(ctx, 'url-expiry')) return
  const done = tasks.find(t => t.terminal?.task.status === 'succeed')
  if (done?.terminal == null) {
    const main = tasks[0]?.terminal
    const why = main == null ? 'no task reached succeed' : `the probe task ${main.task.status}`
    for (const id of ['download', 'url-expiry']) record(ctx, id, 'inconclusive', `not run: ${why}`)
    return
  }
  const video = done.terminal.task.videos[0]
  if (video === undefined) {
    const why = 'the task succeeded without task_result.videos[].url'
    for (const id of ['download', 'url-expiry']) record(ctx, id, 'contradicted', why)
    return
  }
  const shown = showUrl(video.url)
  if (wants(ctx, 'url-expiry')) {
    const finished = done.terminal.task.updatedAt ?? done.sentAt + done.terminal.atMs
    const exp = expiresAt(video.url)
    const evidence: Evidence[] = [{ title: 'the result URL', url: video.url }]
    if (exp === null) {
      const summary = `no expiry in the URL's query string (${shown}): its lifetime cannot be read from it`
      record(ctx, 'url-expiry', 'inconclusive', summary, evidence)
    } else {
      const days = (exp.at - finished) / DAY_MS
      const summary = `${exp.from}: expires ${new Date(exp.at).toISOString()}, ${days.toFixed(2)} days after the ` +
        'task finished'
      const short = exp.at - finished < RETENTION_MS - 3600_000
      const impact = short ? '; upstream_expires_at (30 days) overstates it, the copy must run before then' : ''
      record(ctx, 'url-expiry', short ? 'contradicted' : 'confirmed', summary + impact, evidence)
    }
  }
  if (!wants(ctx, 'download')) return
  ctx.log(`download: GET ${shown}`)
  const d = await download(video.url)
  const ex = d.exchange
  const evidence: Evidence[] = [{ title: 'GET of the result URL', exchange: ex, url: video.url }]
  if (ex.status === null) return record(ctx, 'download', 'inconclusive', `no answer (${ex.error ?? '?'})`, evidence)
  const length = ex.headers['content-length']
  const mp4 = d.head.subarray(4, 8).toString('latin1') === 'ftyp' ? 'an MP4 (ftyp)' : 'not an MP4 ftyp box'
  const facts = `HTTP ${ex.status}, ${ex.headers['content-type'] ?? 'no content-type'}, Content-Length ` +
    `${length ?? 'absent'}, ${d.bytes} bytes read in ${ex.ms} ms, starts as ${mp4}`
  if (ex.status >= 300 && ex.status < 400) {
    const to = ex.headers.location === undefined ? '' : ` to ${showUrl(ex.headers.location)}`
    return record(ctx, 'download', 'contradicted', `a redirect${to}: CopyJobs.download follows none`, evidence)
  }
  const off = [
    ex.status !== 200 && 'not 200',
    length === undefined && 'no Content-Length (the copy still counts its cap while streaming)',
    length !== undefined && !d.over && Number(length) !== d.bytes && 'Content-Length differs from the bytes read',
    d.over && 'over MIRROR_MAX_BYTES\'s default (256 MiB)'
  ].filter((x): x is string => typeof x === 'string')
  record(ctx, 'download', off.length === 0 ? 'confirmed' : 'contradicted',
    facts + (off.length > 0 ? `; ${off.join('; ')}` : ''), evidence)
}
