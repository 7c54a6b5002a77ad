/**
 * After the load: wait for the accepted tasks to settle, then count what broke the promise "a 202 is a task that
 * ends exactly once, and no request pays upstream twice". Everything is read through the public API (an admin key
 * sees every caller's tasks), the simulator's log of paid tasks, and what the webhook receiver got.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { Pool } from 'undici'
import type { Received } from '../../test/helpers/receiver.ts'
import type { LoadResult } from './load.ts'
import type { SimTaskView } from './simulator.ts'

const TERMINAL = new Set(['succeeded', 'failed', 'canceled'])
const TERMINAL_EVENTS = new Set(['video.succeeded', 'video.failed', 'video.canceled'])

export interface Counters {
  /** Distinct task ids that got a 202. */
  accepted: number
  /** Accepted tasks that GET 404 at the end, or are missing from the listing. */
  lost: number
  /** Accepted tasks (not lost) still not terminal after the settle period. */
  stuck: number
  /** Idempotency-Keys that ended up with more than one task id (in 202s or in the listing). */
  duplicate_tasks: number
  /** Idempotency-Keys with more than one upstream task in the simulator. */
  paid_twice: number
  /** webhook-ids seen with two different bodies. */
  reused_event_ids: number
  /** Accepted tasks whose terminal event never reached the receiver. */
  missing_webhooks: number
  /** 5xx answers other than 503 during the load. */
  server_errors: number
  /** After each fault, until /health/ready answered 200 on every live replica: the longest, in seconds. */
  seconds_to_ready: number | null
}

/** The counts whose non-zero value fails a case. */
export const BAD: Array<keyof Counters> = [
  'lost', 'stuck', 'duplicate_tasks', 'paid_twice', 'reused_event_ids', 'missing_webhooks', 'server_errors'
]

export interface Details {
  creates: number
  gave_up: number
  rejected: number
  /** Tasks in the listing whose key never got a 202: the caller does not know they exist. */
  orphans: number
  upstream_tasks: number
  final_status: Record<string, number>
  create_statuses: Record<string, number>
  server_errors_by: Record<string, number>
  webhooks_received: number
  settle_seconds: number
  settled: boolean
  examples: Record<string, string[]>
}

interface TaskView { id: string, status: string, request?: { prompt?: string } }

export interface Api { origin: string, adminKey: string }

/** `503 ×2, IDEMPOTENCY_IN_FLIGHT ×8`: what a request's attempts were answered, in order of first appearance. */
function summarize (answers: string[]): string {
  const counts = new Map<string, number>()
  for (const a of answers) counts.set(a, (counts.get(a) ?? 0) + 1)
  return [...counts].map(([a, n]) => n === 1 ? a : `${a} ×${n}`).join(', ')
}

function taskIdsByKey (load: LoadResult): Map<string, string[]> {
  return new Map(load.creates.map(c => [c.key, c.taskIds]))
}

function acceptedIds (load: LoadResult): string[] {
  return [...new Set(load.creates.flatMap(c => c.taskIds))]
}

/**
 * GETs each id with a bounded number in flight; 404 → null. Other failures are retried a few times; an id that
 * still could not be read is left out (it then counts as stuck, not as lost: nobody saw it gone).
 */
async function getTasks (pool: Pool, adminKey: string, ids: string[]): Promise<Map<string, TaskView | null>> {
  const out = new Map<string, TaskView | null>()
  let next = 0
  const worker = async () => {
    while (next < ids.length) {
      const id = ids[next++]
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          const res = await pool.request({
            method: 'GET',
            path: `/v1/videos/${id}`,
            headers: { authorization: `Bearer ${adminKey}` },
            headersTimeout: 5000,
            bodyTimeout: 5000
          })
          const text = await res.body.text()
          if (res.statusCode === 200) { out.set(id, JSON.parse(text) as TaskView); break }
          if (res.statusCode === 404) { out.set(id, null); break }
        } catch {}
        await sleep(300)
      }
    }
  }
  await Promise.all(Array.from({ length: 16 }, worker))
  return out
}

function terminalEventsByTask (received: Received[]): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>()
  for (const r of received) {
    try {
      const body = JSON.parse(r.body) as { type?: string, data?: { id?: string } }
      if (body.type === undefined || body.data?.id === undefined || !TERMINAL_EVENTS.has(body.type)) continue
      const set = out.get(body.data.id) ?? new Set<string>()
      set.add(body.type)
      out.set(body.data.id, set)
    } catch {}
  }
  return out
}

/**
 * Polls until every accepted task is terminal (or 404) and every terminal one has its terminal webhook, twice in a
 * row a second apart, or until `timeoutMs`. Twice, because right after a failover two replicas may briefly read
 * from different Redis nodes, so one pass can see a state that the next no longer does. Returns how long it took
 * and whether it got there.
 */
export async function settle (
  api: Api,
  load: LoadResult,
  received: () => Received[],
  timeoutMs: number,
  signal: AbortSignal
): Promise<{ seconds: number, settled: boolean }> {
  const t0 = Date.now()
  const pool = new Pool(api.origin, { connections: 16 })
  const ids = acceptedIds(load)
  let stablePasses = 0
  try {
    while (Date.now() - t0 < timeoutMs && !signal.aborted) {
      const tasks = await getTasks(pool, api.adminKey, ids)
      const events = terminalEventsByTask(received())
      const done = ids.every(id => {
        const t = tasks.get(id)
        return t === null || (t !== undefined && TERMINAL.has(t.status) && events.has(id))
      })
      stablePasses = done ? stablePasses + 1 : 0
      if (stablePasses >= 2) return { seconds: (Date.now() - t0) / 1000, settled: true }
      await sleep(done ? 1000 : 500, undefined, { signal }).catch(() => {})
    }
    return { seconds: (Date.now() - t0) / 1000, settled: false }
  } finally {
    await pool.close().catch(() => {})
  }
}

async function listAll (pool: Pool, adminKey: string): Promise<TaskView[]> {
  const all: TaskView[] = []
  let cursor: string | null = null
  for (let page = 0; page < 200; page++) {
    const path: string = `/v1/videos?limit=100${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`
    const headers = { authorization: `Bearer ${adminKey}` }
    let body: { data: TaskView[], next_cursor: string | null } | undefined
    let problem = ''
    for (let attempt = 0; attempt < 5 && body === undefined; attempt++) {
      try {
        const res = await pool.request({ method: 'GET', path, headers, headersTimeout: 10_000, bodyTimeout: 10_000 })
        const text = await res.body.text()
        if (res.statusCode === 200) body = JSON.parse(text) as typeof body
        else problem = `${res.statusCode}: ${text.slice(0, 200)}`
      } catch (err) {
        problem = (err as Error).message
      }
      if (body === undefined) await sleep(500)
    }
    if (body === undefined) throw new Error(`the listing could not be read: ${problem}`)
    all.push(...body.data)
    cursor = body.next_cursor
    if (cursor === null) return all
  }
  throw new Error('listing: more than 200 pages')
}

/** The counters and the details behind them. `secondsToReady` comes from the fault script. */
export async function count (api: Api, load: LoadResult, received: Received[], simTasks: SimTaskView[], opts: {
  keyPrefix: string
  secondsToReady: number | null
  settle: { seconds: number, settled: boolean }
}): Promise<{ counters: Counters, details: Details }> {
  const pool = new Pool(api.origin, { connections: 16 })
  try {
    const ids = acceptedIds(load)
    const tasks = await getTasks(pool, api.adminKey, ids)
    const listed = await listAll(pool, api.adminKey)
    const listedIds = new Set(listed.map(t => t.id))
    const ours = (prompt: string | null | undefined): prompt is string =>
      typeof prompt === 'string' && prompt.startsWith(opts.keyPrefix)

    const lost = ids.filter(id => tasks.get(id) === null || !listedIds.has(id))
    const stuck = ids.filter(id => !lost.includes(id) && !TERMINAL.has(tasks.get(id)?.status ?? ''))

    // One key → task ids: those answered in 202s and those the listing holds with the key as prompt.
    const byKey = new Map<string, Set<string>>()
    for (const [key, taskIds] of taskIdsByKey(load)) byKey.set(key, new Set(taskIds))
    for (const t of listed) {
      const prompt = t.request?.prompt
      if (!ours(prompt)) continue
      byKey.set(prompt, (byKey.get(prompt) ?? new Set()).add(t.id))
    }
    const duplicates = [...byKey].filter(([, s]) => s.size > 1).map(([k]) => k)
    const acceptedKeys = new Set(load.creates.filter(c => c.taskIds.length > 0).map(c => c.key))
    const orphans = listed.filter(t => ours(t.request?.prompt) && !acceptedKeys.has(t.request?.prompt ?? ''))

    const paidByKey = new Map<string, number>()
    for (const t of simTasks) if (ours(t.prompt)) paidByKey.set(t.prompt, (paidByKey.get(t.prompt) ?? 0) + 1)
    const paidTwice = [...paidByKey].filter(([, n]) => n > 1).map(([k]) => k)

    const bodiesById = new Map<string, Set<string>>()
    for (const r of received) {
      const id = String(r.headers['webhook-id'] ?? '')
      if (id === '') continue
      bodiesById.set(id, (bodiesById.get(id) ?? new Set()).add(r.body))
    }
    const reused = [...bodiesById].filter(([, s]) => s.size > 1).map(([id]) => id)

    const events = terminalEventsByTask(received)
    const missing = ids.filter(id => !events.has(id))

    const finalStatus: Record<string, number> = {}
    for (const id of ids) {
      const s = tasks.get(id)?.status ?? '404'
      finalStatus[s] = (finalStatus[s] ?? 0) + 1
    }
    const errorsBy: Record<string, number> = {}
    for (const e of load.serverErrors) {
      const k = `${e.route} ${e.status}${e.code === undefined ? '' : ` ${e.code}`}`
      errorsBy[k] = (errorsBy[k] ?? 0) + 1
    }
    const first = (xs: string[]) => xs.slice(0, 5)
    return {
      counters: {
        accepted: ids.length,
        lost: lost.length,
        stuck: stuck.length,
        duplicate_tasks: duplicates.length,
        paid_twice: paidTwice.length,
        reused_event_ids: reused.length,
        missing_webhooks: missing.length,
        server_errors: load.serverErrors.length,
        seconds_to_ready: opts.secondsToReady
      },
      details: {
        creates: load.creates.length,
        gave_up: load.creates.filter(c => c.final === 'gave-up' || c.final === 'aborted').length,
        rejected: load.creates.filter(c => c.final === 'rejected').length,
        orphans: orphans.length,
        upstream_tasks: simTasks.filter(t => ours(t.prompt)).length,
        final_status: finalStatus,
        create_statuses: load.createStatuses,
        server_errors_by: errorsBy,
        webhooks_received: received.length,
        settle_seconds: opts.settle.seconds,
        settled: opts.settle.settled,
        examples: {
          lost: first(lost),
          stuck: first(stuck.map(id => `${id} (${tasks.get(id)?.status ?? 'unreadable'})`)),
          duplicate_tasks: first(duplicates.map(k => `${k}: ${[...(byKey.get(k) ?? [])].join(' ')}`)),
          paid_twice: first(paidTwice.map(k => `${k} × ${paidByKey.get(k) ?? 0}`)),
          reused_event_ids: first(reused),
          missing_webhooks: first(missing),
          orphans: first(orphans.map(t => `${t.id} (${t.request?.prompt ?? ''}, ${t.status})`)),
          gave_up: first(load.creates.filter(c => c.final === 'gave-up' || c.final === 'aborted')
            .map(c => `${c.key}: ${summarize(c.attempts.map(a => String(a.code ?? a.status)))}`))
        }
      }
    }
  } finally {
    await pool.close().catch(() => {})
  }
}
