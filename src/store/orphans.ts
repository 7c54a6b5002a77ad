/**
 * Callbacks whose token verifies (we issued it, for a task id of ours) but whose task is no longer in Redis: lost
 * in a rollback or a restore, or deleted. The upstream task may still be paid for and may have a result, so it is
 * recorded instead of forgotten, keyed by our task id: a repeated callback updates the record and counts, never
 * adds a second one. Records are kept 30 days after they were last seen, as long as upstream keeps result URLs.
 */
import type { RedisClient } from '../infra/redis.ts'
import type { UpstreamTask } from '../upstream/client.ts'
import type { Keys } from './keys.ts'

export const ORPHAN_RETENTION_MS = 30 * 24 * 3600_000

export interface Orphan {
  taskId: string
  upstreamTaskId: string
  externalTaskId: string | null
  /** Kling's status in the last callback. */
  status: string
  statusMessage: string | null
  videoUrls: string[]
  firstSeenAt: number
  lastSeenAt: number
  /** Callbacks received for it. */
  count: number
}

function decode (h: Record<string, string>): Orphan | null {
  if (h.task_id === undefined) return null
  return {
    taskId: h.task_id,
    upstreamTaskId: h.upstream_task_id,
    externalTaskId: h.external_task_id ?? null,
    status: h.status,
    statusMessage: h.status_message ?? null,
    videoUrls: h.video_urls === undefined ? [] : JSON.parse(h.video_urls) as string[],
    firstSeenAt: Number(h.first_seen_at),
    lastSeenAt: Number(h.last_seen_at),
    count: Number(h.count)
  }
}

export class OrphanStore {
  constructor (private readonly redis: RedisClient, private readonly k: Keys, private readonly clock: () => number) {}

  /** Records one orphaned callback (one MULTI, so a concurrent duplicate cannot split it); returns the record. */
  async record (taskId: string, up: UpstreamTask): Promise<Orphan> {
    const now = this.clock()
    const key = this.k.orphan(taskId)
    const fields: Record<string, string> = {
      task_id: taskId,
      upstream_task_id: up.taskId,
      status: up.status,
      last_seen_at: String(now)
    }
    // A later callback without these (a reordered `processing` after `succeed`) must not erase what was learnt.
    if (up.externalTaskId !== null) fields.external_task_id = up.externalTaskId
    if (up.statusMsg !== null) fields.status_message = up.statusMsg
    if (up.videos.length > 0) fields.video_urls = JSON.stringify(up.videos.map(v => v.url))
    await this.redis.multi()
      .hsetnx(key, 'first_seen_at', String(now))
      .hset(key, fields)
      .hincrby(key, 'count', 1)
      .pexpire(key, ORPHAN_RETENTION_MS)
      .zadd(this.k.orphans, now, taskId)
      .zremrangebyscore(this.k.orphans, '-inf', now - ORPHAN_RETENTION_MS)
      .exec()
    return decode(await this.redis.hgetall(key)) as Orphan
  }

  async get (taskId: string): Promise<Orphan | null> {
    return decode(await this.redis.hgetall(this.k.orphan(taskId)))
  }

  /** Most recently seen first; the cursor is `<last seen>:<task id>` of the previous page's last record. */
  async list (q: { limit: number, cursor?: string }): Promise<{ orphans: Orphan[], nextCursor: string | null }> {
    const colon = q.cursor?.indexOf(':') ?? -1
    const max = q.cursor === undefined ? '+inf' : q.cursor.slice(0, colon)
    const afterId = q.cursor?.slice(colon + 1)
    // Equal scores come in reverse member order, so a page ending inside a run of equal scores resumes after the
    // cursor's id; over-fetching covers runs up to 100 long.
    const raw = await this.redis.zrevrangebyscore(this.k.orphans, max, '-inf', 'WITHSCORES', 'LIMIT', 0, q.limit + 101)
    const page: Array<{ id: string, score: string }> = []
    for (let i = 0; i < raw.length && page.length <= q.limit; i += 2) {
      const [id, score] = [raw[i], raw[i + 1]]
      if (afterId !== undefined && score === max && id >= afterId) continue
      page.push({ id, score })
    }
    const shown = page.slice(0, q.limit)
    const orphans = (await Promise.all(shown.map(async ({ id }) => await this.get(id))))
      .filter((o): o is Orphan => o !== null)
    const last = shown.at(-1)
    return { orphans, nextCursor: page.length > q.limit && last !== undefined ? `${last.score}:${last.id}` : null }
  }
}
