/**
 * Wire shapes of Kling's video endpoints, as Kling serves them and CometAPI relays them (docs/DESIGN.md, "Upstream:
 * CometAPI's Kling route"), and a tolerant parser that turns any task-bearing body into one normalised `UpstreamTask`.
 */

export type KlingStatus = 'submitted' | 'processing' | 'succeed' | 'failed'

export interface UpstreamVideo { id: string, url: string, duration: string | null }

export interface UpstreamTask {
  taskId: string
  status: KlingStatus
  statusMsg: string | null
  externalTaskId: string | null
  videos: UpstreamVideo[]
  /** Unix ms. */
  createdAt: number | null
  /** Unix ms. */
  updatedAt: number | null
}

/** The create body Kling documents for this route. Callers build it; the client sends it as given. */
export interface MultiImage2VideoRequest {
  model_name?: 'kling-v1-6'
  image_list: Array<{ image: string }>
  prompt: string
  negative_prompt?: string
  mode?: 'std' | 'pro'
  duration?: '5' | '10'
  aspect_ratio?: '16:9' | '9:16' | '1:1'
  callback_url?: string
  external_task_id?: string
}

/** Kling's task object: the `data` of a query, and the whole body of a callback. Every field may be missing. */
export interface KlingTaskWire {
  task_id?: string | number | null
  task_status?: string | null
  task_status_msg?: string | null
  task_info?: { external_task_id?: string | null } | null
  task_result?: {
    videos?: Array<{ id?: string | number | null, url?: string | null, duration?: string | number | null }> | null
  } | null
  created_at?: number | string | null
  updated_at?: number | string | null
}

/** Kling's envelope: `code` 0 is success, anything else a business error. */
export interface KlingEnvelope<T = KlingTaskWire> {
  code: number
  message?: string
  request_id?: string
  data?: T | null
}

/** CometAPI's gateway error. */
export interface CometErrorBody {
  error: { message?: string, type?: string, param?: string, code?: string | number | null }
}

type Obj = Record<string, unknown>

export function isObject (v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** A task id: a non-empty string, or a finite number turned into its decimal string. */
export function idString (v: unknown): string | null {
  if (typeof v === 'string') {
    const s = v.trim()
    return s.length > 0 && s.length <= 256 ? s : null
  }
  if (typeof v === 'number' && Number.isFinite(v)) return Number.isInteger(v) ? BigInt(v).toString() : String(v)
  if (typeof v === 'bigint') return v.toString()
  return null
}

const STATUS: Record<string, KlingStatus> = {}
const WORDS: Record<KlingStatus, string[]> = {
  submitted: [
    'submitted', 'submit', 'not_start', 'not_started', 'queued', 'queue', 'queueing', 'queuing', 'pending', 'waiting',
    'created', 'accepted'
  ],
  processing: ['processing', 'process', 'in_progress', 'inprogress', 'running', 'started', 'generating', 'progress'],
  succeed: ['succeed', 'succeeded', 'success', 'successful', 'completed', 'complete', 'done', 'finished'],
  failed: ['failed', 'failure', 'fail', 'error', 'errored', 'cancelled', 'canceled', 'expired', 'rejected']
}
for (const [status, words] of Object.entries(WORDS) as Array<[KlingStatus, string[]]>) {
  for (const s of words) STATUS[s] = status
}

/**
 * Maps Kling's, new-api's and OpenAI-video-style status words onto Kling's four; null when unrecognised
 * (e.g. `UNKNOWN`).
 */
export function normalizeStatus (v: unknown): KlingStatus | null {
  if (typeof v !== 'string') return null
  return STATUS[v.trim().toLowerCase().replace(/[\s-]+/g, '_')] ?? null
}

/** Unix ms from ms or s numbers, numeric strings, or ISO dates; null otherwise. */
export function toMs (v: unknown): number | null {
  let n: number
  if (typeof v === 'number') n = v
  else if (typeof v === 'string' && v.trim() !== '') {
    const s = v.trim()
    n = /^\d+(\.\d+)?$/.test(s) ? Number(s) : Date.parse(s)
  } else return null
  if (!Number.isFinite(n) || n <= 0) return null
  // Anything before 2001-09-09 in ms is taken for seconds.
  return Math.round(n < 1e12 ? n * 1000 : n)
}

function str (v: unknown): string | null {
  if (typeof v !== 'string') return null
  return v.length > 0 ? v : null
}

/** The objects a task may live in, outermost first: the body, `data`, `data.data`. */
function levels (obj: Obj): Obj[] {
  const out: Obj[] = [obj]
  let cur: unknown = obj.data
  while (isObject(cur) && out.length < 3) {
    out.push(cur)
    cur = cur.data
  }
  return out
}

function videosOf (v: unknown, taskId: string): UpstreamVideo[] {
  if (!Array.isArray(v)) return []
  const out: UpstreamVideo[] = []
  v.forEach((item, i) => {
    if (!isObject(item)) return
    const url = str(item.url)
    if (url === null) return
    const duration = typeof item.duration === 'number' && Number.isFinite(item.duration)
      ? String(item.duration)
      : str(item.duration)
    out.push({ id: idString(item.id) ?? `${taskId}-${i}`, url, duration })
  })
  return out
}

/**
 * Tolerant parser of a task: the flat Kling object (a callback body or a query's `data`), the Kling envelope
 * (`data.task_status`), the nested new-api wrapper (`data.data.task_status`, `data.status`), and the new-standard
 * `{id, status, message, external_id, create_time}` callback. Null when there is no task id or no recognisable status.
 */
export function parseTask (obj: unknown): UpstreamTask | null {
  if (!isObject(obj)) return null
  const all = levels(obj)

  // The status: Kling's `task_status` at any depth first, then a wrapper's `status`.
  let primary: Obj | undefined
  let status: KlingStatus | null = null
  for (const key of ['task_status', 'status']) {
    for (const level of all) {
      status = normalizeStatus(level[key])
      if (status !== null) { primary = level; break }
    }
    if (status !== null) break
  }
  if (status === null || primary === undefined) return null

  // Every other field: from the object that held the status, then from the others.
  const order = [primary, ...all.filter(l => l !== primary)]
  const first = <T>(get: (o: Obj) => T | null): T | null => {
    for (const o of order) {
      const v = get(o)
      if (v !== null) return v
    }
    return null
  }

  const taskId = first(o => idString(o.task_id)) ?? first(o => idString(o.id))
  if (taskId === null) return null

  // An envelope's `message` ("SUCCEED") is not the task's; a bare new-standard task's `message` is.
  const isEnvelope = (o: Obj) => 'code' in o && isObject(o.data)
  const statusMsg = first(o => str(o.task_status_msg)) ?? first(o => str(o.fail_reason)) ??
    (isEnvelope(primary) ? null : str(primary.message))

  const externalTaskId = first(o => isObject(o.task_info) ? idString(o.task_info.external_task_id) : null) ??
    first(o => idString(o.external_task_id)) ?? first(o => idString(o.external_id))

  let videos: UpstreamVideo[] = []
  for (const o of order) {
    videos = videosOf(isObject(o.task_result) ? o.task_result.videos : undefined, taskId)
    if (videos.length === 0) videos = videosOf(o.videos, taskId)
    if (videos.length === 0) videos = videosOf(o.outputs, taskId)
    if (videos.length > 0) break
  }

  return {
    taskId,
    status,
    statusMsg,
    externalTaskId,
    videos,
    createdAt: first(o => toMs(o.created_at)) ?? first(o => toMs(o.create_time)),
    updatedAt: first(o => toMs(o.updated_at)) ?? first(o => toMs(o.update_time))
  }
}

/**
 * JSON.parse that keeps 16+ digit integer `task_id`/`id` values exact by quoting them first (Kling's ids are 18-19
 * digits, past Number.MAX_SAFE_INTEGER). Throws like JSON.parse on invalid JSON.
 */
export function parseJsonKeepingIds (text: string): unknown {
  return JSON.parse(text.replace(/("(?:task_id|id)"\s*:\s*)(-?\d{16,})(?=\s*[,}\]])/g, '$1"$2"'))
}
