/**
 * Failovers on real topologies (issue 10): a Sentinel set (1 master, 2 replicas, 3 sentinels) and a Redis Cluster
 * (3 masters, 3 replicas), all on loopback. Creates keep coming during the failover, each retried with its own
 * Idempotency-Key on 503 as a good client would; afterwards every 202 is a task on the new master, no key made
 * two tasks, no answer was a 500, and no task was paid twice.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startCluster, startSentinelSet, type ClusterSet, type SentinelSet } from './helpers/redis-topology.ts'
import { auth, startHarness, type Harness } from './helpers/harness.ts'
import { validBody, waitFor } from './helpers/tasks.ts'

const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

interface LoadResult { accepted: Map<string, string>, statuses: number[] }

/** The load (20 creates a second, one caller) is about failover, not the per-caller create bucket. */
const UNLIMITED = { CALLER_CREATES_PER_MINUTE: '0' }

/** One create every `everyMs` until `stop()`; each retried with its key on 503 (at most 40 tries, 250 ms apart). */
function load (h: Harness, everyMs: number) {
  const result: LoadResult = { accepted: new Map(), statuses: [] }
  const state = { running: true }
  const inFlight: Array<Promise<void>> = []
  const one = async (key: string) => {
    for (let attempt = 0; attempt < 40; attempt++) {
      const res = await h.app.inject({
        method: 'POST',
        url: '/v1/videos',
        headers: { ...auth('alice'), 'idempotency-key': key },
        payload: validBody({ prompt: key })
      })
      result.statuses.push(res.statusCode)
      if (res.statusCode === 202) { result.accepted.set(key, res.json().id as string); return }
      if (res.statusCode !== 503) return
      await sleep(250)
    }
  }
  const loop = (async () => {
    for (let i = 0; state.running && i < 400; i++) {
      inFlight.push(one(`k-${i}`))
      await sleep(everyMs)
    }
  })()
  return {
    result,
    stop: async () => {
      state.running = false
      await loop
      await Promise.all(inFlight)
      return result
    }
  }
}

/** Every accepted task is there, one per key, none paid twice, and nothing answered 500. */
async function expectNothingLost (h: Harness, result: LoadResult) {
  expect(result.accepted.size).toBeGreaterThan(5)
  expect(result.statuses.filter(s => s !== 202 && s !== 503)).toEqual([])
  const ids = [...result.accepted.values()]
  expect(new Set(ids).size).toBe(ids.length)
  for (const [key, id] of result.accepted) {
    const res = await h.app.inject({ url: `/v1/videos/${id}`, headers: auth('alice') })
    expect(res.statusCode, `${key} → ${id}: ${res.body}`).toBe(200)
  }
  const listed = new Map<string, number>()
  let cursor: string | null = null
  for (let page = 0; page < 50; page++) {
    const cursorParam = cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`
    const res = await h.app.inject({ url: `/v1/videos?limit=100${cursorParam}`, headers: auth('alice') })
    const body = res.json() as { data: Array<{ request: { prompt: string } }>, next_cursor: string | null }
    for (const t of body.data) listed.set(t.request.prompt, (listed.get(t.request.prompt) ?? 0) + 1)
    cursor = body.next_cursor
    if (cursor === null) break
  }
  for (const [key, n] of listed) expect(n, `tasks for ${key}`).toBe(1)
  // Upstream: at most one create accepted per key (the simulator keeps each create's prompt).
  await sleep(500)
  const perKey = new Map<string, number>()
  for (const t of h.sim.tasks.values()) {
    const prompt = String(t.body.prompt)
    perKey.set(prompt, (perKey.get(prompt) ?? 0) + 1)
  }
  for (const [key, n] of perKey) expect(n, `upstream tasks for ${key}`).toBe(1)
}

describe('Sentinel', () => {
  let set: SentinelSet
  let h: Harness
  beforeAll(async () => {
    set = await startSentinelSet({ appendfsync: 'everysec' })
    h = await startHarness({
      env: { REDIS_URL: '', REDIS_SENTINELS: set.sentinelAddrs, REDIS_SENTINEL_NAME: set.masterName, ...UNLIMITED },
      sim: { auto: false }
    })
  }, 60_000)
  afterAll(async () => {
    await h?.close()
    await set?.stop()
  })

  it('waits for every replica by default and loses no accepted task in a planned failover', async () => {
    // Both replicas: the one Sentinel promotes stops copying the old master before the other is re-pointed.
    expect(h.config.redis.minReplicasAcked).toBe('auto')
    expect(h.app.deps.store.durability.rule.replicas).toBe(2)
    const old = await set.master()
    const run = load(h, 50)
    await sleep(1000)
    await set.failover()
    const fresh = await set.waitNewMaster(old)
    expect(fresh).not.toBe(old)
    await sleep(2000)
    const result = await run.stop()
    await expectNothingLost(h, result)
    // The gateway writes to the new master: a new create lands there.
    const after = await h.app.inject({
      method: 'POST', url: '/v1/videos', headers: auth('alice'), payload: validBody()
    })
    expect(after.statusCode, after.body).toBe(202)
    expect(await fresh.command('EXISTS', `{${h.prefix}}:task:${after.json().id as string}`)).toBe(1)
    const submitted = await waitFor(h, after.json().id, t => t.status === 'submitted', 10_000)
    expect(submitted.status).toBe('submitted')
  }, 90_000)
})

describe('Cluster', () => {
  let cluster: ClusterSet
  let h: Harness
  beforeAll(async () => {
    cluster = await startCluster({ appendfsync: 'everysec' })
    h = await startHarness({
      env: { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.seeds, REDIS_MIN_REPLICAS_ACKED: '1', ...UNLIMITED },
      sim: { auto: false }
    })
  }, 90_000)
  afterAll(async () => {
    await h?.close()
    await cluster?.stop()
  })

  it('answers 503 (never 500) while the master of its slot is killed, and loses no accepted task', async () => {
    const key = `{${h.prefix}}:task:x`
    const old = await cluster.masterFor(key)
    const run = load(h, 50)
    await sleep(1000)
    await old.kill9()
    const fresh = await cluster.waitNewMaster(key, old)
    // Until the old master is back as its replica, the new one has none: WAIT 1 cannot be met, creates answer
    // 503 (the rule holds, nothing is accepted that one more failure could lose). Then they go through again.
    await old.restart()
    for (let i = 0; i < 100 && !String(await fresh.command('INFO', 'replication')).includes('state=online'); i++) {
      await sleep(100)
    }
    await sleep(1500)
    const result = await run.stop()
    expect(result.statuses).toContain(503)
    await expectNothingLost(h, result)
  }, 120_000)
})
