/**
 * Accepted means durable (issue 10): a create whose script times out on the client but runs late, a write that
 * is not yet on a replica, and a rollback that reuses a sequence must never make two tasks, pay twice, lose an
 * accepted task or reuse an event id. Each test runs its own redis-server(s): CLIENT PAUSE and a stopped replica
 * would stall the other test files' shared Redis.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { startRedisServer, type EmbeddedRedis } from '../src/infra/embedded-redis.ts'
import { isRedisUnavailable } from '../src/infra/redis.ts'
import { keys } from '../src/store/keys.ts'
import { PARKED_UNCLAIMED_MS, TaskStore } from '../src/store/tasks.ts'
import { WebhookStore } from '../src/store/webhooks.ts'
import { auth, startHarness, type Harness } from './helpers/harness.ts'
import { validBody, waitFor } from './helpers/tasks.ts'
import { makePng } from './helpers/images.ts'

const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))
const servers: EmbeddedRedis[] = []
const dirs: string[] = []

async function redisServer (extraArgs: string[] = []): Promise<EmbeddedRedis> {
  const dir = await mkdtemp(join(tmpdir(), 'kg-durable-'))
  dirs.push(dir)
  const server = await startRedisServer({ dir, persist: false, extraArgs })
  servers.push(server)
  return server
}

afterAll(async () => {
  for (const s of servers) await s.stop()
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

async function create (h: Harness, body: Record<string, unknown>, key?: string) {
  return await h.app.inject({
    method: 'POST',
    url: '/v1/videos',
    headers: { ...auth('alice'), ...(key !== undefined && { 'idempotency-key': key }) },
    payload: body
  })
}

/** Holds every write on `url` for `ms` (scripts included), as a command stuck on the wire would be. */
async function pauseWrites (url: string, ms: number): Promise<void> {
  const side = new Redis(url)
  await side.call('CLIENT', 'PAUSE', String(ms), 'WRITE')
  side.disconnect()
}

describe('a create whose script runs after the client gave up', () => {
  let redis: EmbeddedRedis
  let h: Harness
  beforeAll(async () => {
    redis = await redisServer()
    // No create bucket: its own write (bucket-2, before the body is checked) would be the one held by the pause,
    // and this is about the create script running late.
    h = await startHarness({ env: { REDIS_URL: redis.url, CALLER_CREATES_PER_MINUTE: '0' }, sim: { auto: false } })
  })
  afterAll(async () => { await h?.close() })

  it('answers 503; the retry with the same key returns that task at once: ' +
    'one task, one paid upstream create', async () => {
    const body = validBody({ prompt: 'late create, retried' })
    await pauseWrites(redis.url, 2500)
    const first = await create(h, body, 'late-1')
    expect(first.statusCode, first.body).toBe(503)
    expect(first.headers['retry-after']).toBe('1')
    expect(first.headers['content-type']).toMatch(/application\/problem\+json/)

    await sleep(700) // the pause is over: the held script has run by now
    const retry = await create(h, body, 'late-1')
    expect(retry.statusCode, retry.body).toBe(202)
    expect(retry.headers['idempotent-replayed']).toBe('true')
    const mine = (await h.app.inject({ url: '/v1/videos', headers: auth('alice') }))
      .json().data as Array<{ id: string, request: { prompt: string } }>
    const tasks = mine.filter(t => t.request.prompt === body.prompt)
    expect(tasks.map(t => t.id)).toEqual([retry.json().id])

    const done = await waitFor(h, retry.json().id, t => t.status === 'submitted', 8000)
    expect(done.status).toBe('submitted')
    expect(h.sim.counts.accepted).toBe(1)
  }, 20_000)

  it('without a key, the late task is withdrawn (canceled NOT_ACCEPTED) and never sent upstream', async () => {
    const before = h.sim.counts.creates
    const body = validBody({ prompt: 'late create, no key' })
    await pauseWrites(redis.url, 2500)
    const first = await create(h, body)
    expect(first.statusCode, first.body).toBe(503)
    const all = (await h.app.inject({ url: '/v1/videos', headers: auth('alice') }))
      .json().data as Array<{ id: string, status: string, error: { code: string } | null, request: { prompt: string } }>
    const late = all.filter(t => t.request.prompt === body.prompt)
    expect(late).toHaveLength(1)
    // Canceled by the create itself when Redis answers its withdrawal in time, else by the submit job that finds the
    // mark (on a loaded machine the withdrawal can time out behind the paused writes too).
    const settled = await waitFor(h, late[0].id, t => t.status !== 'queued')
    expect(settled.status).toBe('canceled')
    expect(settled.error?.code).toBe('NOT_ACCEPTED')
    // Reconciliation looks at it again: a withdrawn task stays out of upstream.
    await h.app.deps.reconcile.checkTask(late[0].id)
    await sleep(300)
    expect(h.sim.counts.creates).toBe(before)
  }, 20_000)
})

describe('the create script on its own', () => {
  let redis: EmbeddedRedis
  let client: Redis
  let now = Date.now()
  const prefix = 'unit'
  beforeAll(async () => {
    redis = await redisServer()
    client = new Redis(redis.url)
  })
  afterAll(async () => { client?.disconnect() })
  const store = () => new TaskStore(client, prefix, () => now)
  const task = (id: string) => ({
    id,
    caller: 'alice',
    createdAt: now,
    reference: null,
    metadata: null,
    request: {},
    externalTaskId: `ext-${id}`,
    webhookUrl: null
  })

  it('a late create that runs after its retry finds the retry\'s task and frees its own parked images', async () => {
    const s = store()
    const image = makePng(400, 300)
    expect(await s.park('late-a', new Map([['/image_list/0/image', image]]))).toBe(true)
    expect(await s.park('retry-b', new Map([['/image_list/0/image', image]]))).toBe(true)
    expect(await s.parkedBytes()).toBe(2 * image.length)
    const key = { key: 'k-1', fingerprint: 'f-1' }
    expect((await s.create(task('retry-b'), key)).outcome).toBe('created')
    const late = await s.create(task('late-a'), key)
    expect(late).toMatchObject({ outcome: 'existing', task: { id: 'retry-b' } })
    expect(await s.get('late-a')).toBeNull()
    expect(await client.exists(keys(prefix).parked('late-a'))).toBe(0)
    expect(await s.parkedBytes()).toBe(image.length)
    // The same key with another body: 'mismatch', nothing stored, its images freed as well.
    expect(await s.park('other-c', new Map([['/image_list/0/image', image]]))).toBe(true)
    expect(await s.create(task('other-c'), { key: 'k-1', fingerprint: 'f-2' }))
      .toEqual({ outcome: 'mismatch', taskId: 'retry-b' })
    expect(await s.parkedBytes()).toBe(image.length)
    // A re-sent script (ioredis resends after a reconnect) finds its own task.
    expect((await s.create(task('retry-b'), key)).outcome).toBe('created')
    expect(await client.zcard(keys(prefix).index('alice', '*'))).toBe(1)
  })

  it('frees images no stored task took over once they are older than the unclaimed limit', async () => {
    const s = store()
    const before = await s.parkedBytes()
    expect(await s.park('orphan-images', new Map([['/image_list/0/image', Buffer.alloc(1000, 1)]]))).toBe(true)
    expect(await s.releaseUnclaimedParked()).toBe(0)
    now += PARKED_UNCLAIMED_MS + 1
    expect(await s.releaseUnclaimedParked()).toBe(1)
    expect(await s.parkedBytes()).toBe(before)
    // Released twice: the counter moves once.
    await s.releaseParked('orphan-images')
    expect(await s.parkedBytes()).toBe(before)
  })

  it('gives every event an id of its own, also when a rollback makes a sequence be used again', async () => {
    const s = store()
    expect((await s.create(task('rolled'))).outcome).toBe('created')
    const up = { task_id: 'u-1', status: 'submitted' as const, status_msg: null }
    const first = await s.transition('rolled', () => ({ to: 'submitted', upstream: up }))
    expect(first.applied && first.event?.sequence).toBe(2)
    // What a failover or an AOF restored from before that write leaves: the task back at sequence 1.
    await client.hset(keys(prefix).task('rolled'), 'status', 'queued', 'sequence', '1')
    await client.ltrim(keys(prefix).taskEvents('rolled'), 0, 0)
    const second = await s.transition('rolled', () => ({ to: 'processing', upstream: { ...up, status: 'processing' } }))
    expect(second.applied && second.event?.sequence).toBe(2)
    const [a, b] = [first, second].map(o => o.applied ? o.event?.id : undefined)
    expect(a).toMatch(/^evt_/)
    expect(b).not.toBe(a)
    // webhook-ids derive from the event id and the destination, so they differ too.
    expect(WebhookStore.deliveryId(a as string, 'ep_1')).not.toBe(WebhookStore.deliveryId(b as string, 'ep_1'))
    // The stream carries the id beside the event.
    const entries = await client.xrange(keys(prefix).events, '-', '+')
    const ids = entries.map(([, fields]) => fields[fields.indexOf('id') + 1])
    expect(ids).toContain(a)
    expect(ids).toContain(b)
  })
})

describe('durable before 202 and before paying: REDIS_MIN_REPLICAS_ACKED', () => {
  let master: EmbeddedRedis
  let replica: EmbeddedRedis
  let h: Harness
  beforeAll(async () => {
    master = await redisServer(['--repl-diskless-sync-delay', '0'])
    replica = await redisServer(['--replicaof', '127.0.0.1', String(master.port)])
    const side = new Redis(master.url)
    for (let i = 0; i < 200 && !(await side.info('replication')).includes('state=online'); i++) await sleep(50)
    side.disconnect()
    h = await startHarness({
      env: { REDIS_URL: master.url, REDIS_MIN_REPLICAS_ACKED: '1', REDIS_ACK_TIMEOUT_MS: '1000' }, sim: { auto: false }
    })
  })
  afterAll(async () => { await h?.close() })

  it('answers 202 once a replica holds the task, 503 while none does, ' +
    'and the retry returns the same task', async () => {
    const ok = await create(h, validBody({ prompt: 'replicated' }), 'rep-1')
    expect(ok.statusCode, ok.body).toBe(202)
    await waitFor(h, ok.json().id, t => t.status === 'submitted', 5000)
    const acceptedBefore = h.sim.counts.accepted
    expect(acceptedBefore).toBe(1)

    // The replica stops answering (SIGSTOP: a partition). The master still takes the write, WAIT says 0.
    replica.process.kill('SIGSTOP')
    try {
      const refused = await create(h, validBody({ prompt: 'not replicated yet' }), 'rep-2')
      expect(refused.statusCode, refused.body).toBe(503)
      expect(refused.headers['retry-after']).toBe('1')
      expect(refused.json().detail).toMatch(/0 of 1 Redis replicas/)
      // Its submit job runs, but sends nothing while the mark before paying cannot be made durable.
      await sleep(1500)
      expect(h.sim.counts.creates).toBe(acceptedBefore)
    } finally {
      replica.process.kill('SIGCONT')
    }
    const retried = await create(h, validBody({ prompt: 'not replicated yet' }), 'rep-2')
    expect(retried.statusCode, retried.body).toBe(202)
    expect(retried.headers['idempotent-replayed']).toBe('true')
    const done = await waitFor(h, retried.json().id, t => t.status === 'submitted', 10_000)
    expect(done.status).toBe('submitted')
    expect(h.sim.counts.accepted).toBe(acceptedBefore + 1)
  }, 30_000)
})

describe('failover and cluster errors are 503, never 500', () => {
  it('classifies every failover, loading and cluster state as "briefly unavailable"', () => {
    const unavailable = [
      'CLUSTERDOWN The cluster is down', 'TRYAGAIN Multiple keys request during rehashing of slot',
      'MOVED 3999 127.0.0.1:6381', 'ASK 3999 127.0.0.1:6381', 'READONLY You can\'t write against a read only replica.',
      'LOADING Redis is loading the dataset in memory', 'UNBLOCKED force unblock from blocking operation',
      'MASTERDOWN Link with MASTER is down', 'NOREPLICAS Not enough good replicas to write.',
      'Too many Cluster redirections. Last error: MOVED 1 127.0.0.1:1',
      'Cluster isn\'t ready and enableOfflineQueue options is false',
      'Command timed out', 'Command aborted due to connection close', 'Connection is closed.',
      'Failed to refresh slots cache.'
    ]
    for (const message of unavailable) expect(isRedisUnavailable(new Error(message)), message).toBe(true)
    const all = new Error('Failed to refresh slots cache.')
    all.name = 'ClusterAllFailedError'
    expect(isRedisUnavailable(all)).toBe(true)
    expect(isRedisUnavailable(new Error('ERR wrong number of arguments'))).toBe(false)
    expect(isRedisUnavailable(new Error('WRONGTYPE Operation against a key holding the wrong kind of value')))
      .toBe(false)
  })
})
