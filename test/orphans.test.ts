/**
 * Orphaned callbacks: a valid token (we issued it) for a task that is no longer in Redis is recorded once per task,
 * counted in kg_orphan_callbacks_total, logged, listed for admins on GET /v1/orphans, and answered 202 so that
 * CometAPI stops retrying. Real app, real redis-server, real simulator.
 */
import { keys } from '../src/store/keys.ts'
import { describe, it, expect } from 'vitest'
import { callbackToken } from '../src/domain/callback-token.ts'
import { auth, type Harness, harnessPerTest } from './helpers/harness.ts'
import { callbackPath, createTask, getTask, waitFor } from './helpers/tasks.ts'

const harness = harnessPerTest()

const orphanCount = async (h: Harness, status: string): Promise<number> => {
  const text = (await h.app.inject('/metrics')).body
  const m = new RegExp(`^kg_orphan_callbacks_total\\{status="${status}"\\} (\\d+)$`, 'm').exec(text)
  return m === null ? NaN : Number(m[1])
}
const warnings = (h: Harness) => h.logs.lines.map(l => JSON.parse(l) as Record<string, unknown>)
  .filter(l => l.level === 40 && String(l.msg).includes('recorded as an orphan'))
const list = async (h: Harness, query = '', who: 'alice' | 'ops' = 'ops') =>
  await h.app.inject({ url: `/v1/orphans${query}`, headers: auth(who) })

describe('callbacks for a task that no longer exists', () => {
  it('answers 202 orphaned, records the upstream task once across callbacks, counts and logs each', async () => {
    const h = await harness({ sim: { auto: false } })
    const task = await createTask(h)
    const submitted = await waitFor(h, task.id, t => t.status === 'submitted')
    const upstreamId = submitted.upstream?.task_id as string
    const externalId = (await h.app.deps.store.get(task.id))?.externalTaskId as string
    // The task is lost (a Redis rollback, a deletion) while its upstream twin goes on.
    await h.redis.del(keys(h.prefix).task(task.id))
    expect(await getTask(h, task.id)).toMatchObject({ status: 404 })
    expect(await orphanCount(h, 'processing')).toBe(0)

    const url = callbackPath(h, task.id)
    const first = await h.app.inject({
      method: 'POST',
      url,
      payload: { task_id: upstreamId, task_status: 'processing', task_info: { external_task_id: externalId } }
    })
    expect(first.statusCode).toBe(202)
    expect(first.json()).toEqual({ outcome: 'orphaned', status: 'processing' })
    const videoUrl = 'https://cdn.example.com/result/v.mp4'
    const second = await h.app.inject({
      method: 'POST',
      url,
      payload: {
        task_id: upstreamId,
        task_status: 'succeed',
        task_status_msg: 'done',
        task_result: { videos: [{ id: 'v1', url: videoUrl, duration: '5' }] }
      }
    })
    expect(second.statusCode).toBe(202)
    expect(second.json()).toEqual({ outcome: 'orphaned', status: 'succeed' })

    const res = await list(h)
    expect(res.statusCode).toBe(200)
    const { data, next_cursor: next } = res.json() as { data: Array<Record<string, string>>, next_cursor: null }
    expect(next).toBeNull()
    expect(data).toHaveLength(1)
    expect(data[0]).toMatchObject({
      task_id: task.id,
      upstream_task_id: upstreamId,
      // Kept from the first callback: the second did not repeat it.
      external_task_id: externalId,
      status: 'succeed',
      status_message: 'done',
      video_urls: [videoUrl],
      count: 2
    })
    expect(Date.parse(data[0].first_seen_at)).toBeLessThanOrEqual(Date.parse(data[0].last_seen_at))

    // Counted by upstream status only, and the task was not brought back by the callbacks.
    expect(await orphanCount(h, 'processing')).toBe(1)
    expect(await orphanCount(h, 'succeed')).toBe(1)
    expect((await h.app.inject('/metrics')).body).not.toContain(task.id)
    expect(await h.redis.exists(keys(h.prefix).task(task.id))).toBe(0)

    // One warning per orphaned callback, naming the tasks, never the token.
    const lines = warnings(h)
    expect(lines.map(l => [l.taskId, l.upstreamTaskId, l.upstreamStatus, l.count])).toEqual([
      [task.id, upstreamId, 'processing', 1], [task.id, upstreamId, 'succeed', 2]
    ])
    const mac = callbackToken(h.config.callbackSecret as string, task.id, Date.now() + 60_000).split('.').at(-1) ?? ''
    expect(h.logs.text).not.toContain(mac)
  })

  it('hides the list from callers who are not admins (404 as for an unknown route)', async () => {
    const h = await harness({ sim: { auto: false } })
    const payload = { task_id: '7001', task_status: 'failed' }
    await h.app.inject({ method: 'POST', url: callbackPath(h, 'gone-task-1'), payload })
    expect((await list(h)).json().data).toHaveLength(1)
    const hidden = await list(h, '', 'alice')
    expect(hidden.statusCode).toBe(404)
    expect(hidden.headers['content-type']).toMatch(/^application\/problem\+json/)
    expect(hidden.json()).toMatchObject({ code: 'NOT_FOUND', detail: 'no route GET /v1/orphans' })
    expect(hidden.body).not.toContain('gone-task-1')
    const unknown = await h.app.inject({ url: '/v1/orphans/x', headers: auth('alice') })
    expect(hidden.json()).toEqual({ ...unknown.json(), detail: 'no route GET /v1/orphans' })
    expect((await h.app.inject({ url: '/v1/orphans' })).statusCode).toBe(401)
  })

  it('still answers 404 for a wrong token and records nothing', async () => {
    const h = await harness({ sim: { auto: false } })
    const good = callbackPath(h, 'gone-task-2')
    for (const url of [good.slice(0, -3), '/callbacks/kling?token=gone-task-2.AAAA', '/callbacks/kling']) {
      const res = await h.app.inject({ method: 'POST', url, payload: { task_id: '7002', task_status: 'succeed' } })
      expect(res.statusCode, url).toBe(404)
      expect(res.json().detail).toBe('callback target not found')
    }
    expect((await list(h)).json()).toEqual({ data: [], next_cursor: null })
    expect(await h.redis.exists(keys(h.prefix).orphan('gone-task-2'))).toBe(0)
    expect(await orphanCount(h, 'succeed')).toBe(0)
    expect(warnings(h)).toEqual([])
  })

  it('lists most recently seen first, in bounded pages', async () => {
    const h = await harness({ sim: { auto: false } })
    for (const id of ['gone-a', 'gone-b', 'gone-c']) {
      const payload = { task_id: `up-${id}`, task_status: 'processing' }
      const res = await h.app.inject({ method: 'POST', url: callbackPath(h, id), payload })
      expect(res.statusCode).toBe(202)
      await new Promise(resolve => setTimeout(resolve, 2))
    }
    const first = (await list(h, '?limit=2')).json() as { data: Array<{ task_id: string }>, next_cursor: string }
    expect(first.data.map(o => o.task_id)).toEqual(['gone-c', 'gone-b'])
    const second = (await list(h, `?limit=2&cursor=${encodeURIComponent(first.next_cursor)}`)).json()
    expect(second).toMatchObject({ data: [{ task_id: 'gone-a' }], next_cursor: null })
    expect((await list(h, '?limit=101')).statusCode).toBe(400)
  })
})
