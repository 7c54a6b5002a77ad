/**
 * The fair share of UPSTREAM_CONCURRENCY (src/jobs/fair.ts) end to end: the real app on the run's redis-server, the
 * simulator answering every create after 150 ms so the two slots are the bottleneck. The order in which creates
 * reached the simulator (each prompt names its caller) is what is asserted, never how long anything took.
 */
import { describe, it, expect } from 'vitest'
import { randomBytes } from 'node:crypto'
import { harnessPerTest, type Harness } from './helpers/harness.ts'
import { createTask } from './helpers/tasks.ts'
import { keys } from '../src/store/keys.ts'
import { FairStore, STEP_UNIT } from '../src/store/fair.ts'

const start = harnessPerTest()
const ENV = { UPSTREAM_CONCURRENCY: '2' }
const SIM = { auto: false, createDelayMs: 150 }
const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

/** Queues `n` tasks of `who`, prompts `<tag>-<i>`. */
async function queue (h: Harness, who: 'alice' | 'bob', tag: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await createTask(h, { prompt: `${tag}-${i}` }, who)
}

/** The callers' tags of the creates the simulator received, in arrival order. */
const order = (h: Harness): string[] => h.sim.createLog.map(c => (c.prompt ?? '?').split('-')[0])

/** Waits (bounded) until the simulator has received `n` creates tagged `tag`. */
async function creates (h: Harness, tag: string, n: number, ms = 25_000): Promise<void> {
  for (let waited = 0; order(h).filter(t => t === tag).length < n && waited < ms; waited += 25) await sleep(25)
  expect(order(h).filter(t => t === tag).length, `creates of ${tag}`).toBe(n)
}

/** Waits (bounded) until both slots are busy upstream, so the next create is decided by a slot release. */
async function slotsBusy (h: Harness): Promise<void> {
  for (let waited = 0; h.sim.inFlight < 2 && waited < 10_000; waited += 10) await sleep(10)
  expect(h.sim.inFlight).toBe(2)
}

/** Where B's creates fall after `from`: the first one's place, and B's share from its first to its last create. */
function shareOf (h: Harness, tag: string, from: number): { first: number, share: number } {
  const seen = order(h).slice(from)
  const first = seen.indexOf(tag)
  const window = seen.slice(first, seen.lastIndexOf(tag) + 1)
  return { first, share: window.filter(t => t === tag).length / window.length }
}

async function metric (h: Harness, line: RegExp): Promise<number> {
  const text = (await h.app.inject({ url: '/metrics' })).body
  const m = line.exec(text)
  expect(m, `${String(line)} in /metrics`).not.toBeNull()
  return Number(m?.[1])
}

/**
 * Once alice's batch holds both slots, bob queues `n`: the slot releases after that are the creates that arrive
 * after `from`, so bob's first must be one of the next two, and his share while he has work within `range`.
 */
async function bobBehindAlice (h: Awaited<ReturnType<typeof start>>, n: number, range: [number, number]) {
  await slotsBusy(h)
  const from = h.sim.createLog.length
  await queue(h, 'bob', 'B', n)
  await creates(h, 'B', n)
  const { first, share } = shareOf(h, 'B', from)
  const seen = order(h).slice(from).join('')
  expect(first, seen).toBeLessThan(2)
  expect(share, seen).toBeGreaterThanOrEqual(range[0])
  expect(share, seen).toBeLessThanOrEqual(range[1])
}

describe('fair share of the upstream concurrency', () => {
  it('gives a caller that queues behind another\'s batch the next slot, then about half of them', async () => {
    const h = await start({ env: ENV, sim: SIM })
    await queue(h, 'alice', 'A', 50)
    expect(await metric(h, /^kg_caller_submit_waiting\{caller="alice"\} (\d+)$/m)).toBeGreaterThan(30)
    await bobBehindAlice(h, 5, [0.35, 0.65])
    expect(h.sim.maxInFlight).toBeLessThanOrEqual(2)
    expect(await metric(h, /^kg_caller_submits_total\{caller="bob"\} (\d+)$/m)).toBe(5)
    expect(await metric(h, /^kg_caller_submit_waiting\{caller="bob"\} (\d+)$/m)).toBe(0)
  })

  it('shares by weight: a caller of weight 3 gets about three slots in four', async () => {
    const h = await start({ env: { ...ENV, CALLER_LIMITS: '{"bob":{"weight":3}}' }, sim: SIM })
    await queue(h, 'alice', 'A', 40)
    await bobBehindAlice(h, 12, [0.65, 0.9])
  })

  it('is work-conserving: a caller alone uses every slot, and the fair-share keys empty behind it', async () => {
    const h = await start({ env: ENV, sim: SIM })
    await queue(h, 'alice', 'A', 8)
    await creates(h, 'A', 8)
    expect(h.sim.maxInFlight).toBe(2)
    const k = keys(h.prefix)
    for (let waited = 0; await h.redis.zcard(k.fairSlots) > 0 && waited < 10_000; waited += 25) await sleep(25)
    expect(await h.redis.zcard(k.fairSlots)).toBe(0)
    expect(await h.redis.zcard(k.fairReady)).toBe(0)
    expect(await h.redis.hlen(k.fairQueued)).toBe(0)
    expect(await h.redis.hlen(k.fairCallers)).toBe(0)
    // The one lag left is bounded by a weight-1 step; nothing else is kept for an idle caller.
    expect(await h.redis.hlen(k.fairLag)).toBeLessThanOrEqual(1)
  })

  it('holds the cap and the fairness across two replicas on one prefix', async () => {
    const env = { ...ENV, REDIS_PREFIX: `t${randomBytes(6).toString('hex')}` }
    const one = await start({ env, sim: SIM, keepKeys: true })
    const two = await start({ env, simulator: one.sim })
    await queue(one, 'alice', 'A', 30)
    await slotsBusy(one)
    const from = one.sim.createLog.length
    await queue(two, 'bob', 'B', 5)
    await creates(one, 'B', 5)
    const { first, share } = shareOf(one, 'B', from)
    expect(first, order(one).slice(from).join('')).toBeLessThan(2)
    expect(share).toBeGreaterThanOrEqual(0.35)
    expect(share).toBeLessThanOrEqual(0.65)
    expect(one.sim.maxInFlight).toBeLessThanOrEqual(2)
    // B queued on replica two while replica one's A held the slots: one shared line, and every task released once
    // by one replica or the other.
    await creates(one, 'A', 30)
    const released = (h: Harness) => [...h.app.deps.jobs.fair.released.values()].reduce((a, b) => a + b, 0)
    expect(released(one) + released(two)).toBe(35)
    expect(one.sim.createLog.length).toBe(35)
  })

  it('queues a task again once only: a repeated submit or reconciliation leaves one place in line', async () => {
    const h = await start({ env: ENV, sim: SIM })
    await queue(h, 'alice', 'A', 6)
    const k = keys(h.prefix)
    const waiting = await h.redis.hkeys(k.fairQueued)
    expect(waiting.length).toBeGreaterThan(0)
    const id = waiting[0]
    await h.app.deps.jobs.submit(id)
    expect(await h.app.deps.reconcile.checkTask(id)).toBe('requeued')
    await creates(h, 'A', 6)
    for (let waited = 0; await h.redis.zcard(k.fairSlots) > 0 && waited < 10_000; waited += 25) await sleep(25)
    expect(h.sim.createLog.length).toBe(6)
    expect(h.app.deps.jobs.fair.released.get('alice')).toBe(6)
  })

  it('keeps every number bounded: weights 1:2:3 over 600 releases, lags within one step, no state left', async () => {
    const h = await start({ env: ENV, workers: false })
    const k = keys(`fairunit${randomBytes(4).toString('hex')}`)
    const fair = new FairStore(h.redis, k)
    const weights = { a: 1, b: 2, c: 3 }
    for (let i = 0; i < 200; i++) for (const c of ['a', 'b', 'c']) await fair.enqueue(`${c}-${i}`, c, 1000 + i)
    const got: string[] = []
    const ids: string[] = []
    let maxLag = 0
    for (let i = 0; i < 600; i++) {
      const [one] = await fair.release({ now: 1, cap: 1, leaseMs: 60_000, defaultWeight: 1, weights, max: 1 })
      got.push(one.caller)
      ids.push(one.taskId)
      await fair.done(one.taskId)
      const lags = Object.values(await h.redis.hgetall(k.fairLag)).map(Number)
      maxLag = Math.max(maxLag, ...lags)
      expect(lags.length).toBeLessThanOrEqual(3)
    }
    // While all three have work (the first 300 releases, before c runs dry at 200), shares follow 1:2:3.
    const head = got.slice(0, 300)
    const n = (c: string) => head.filter(x => x === c).length
    expect(n('a')).toBeGreaterThanOrEqual(45)
    expect(n('a')).toBeLessThanOrEqual(55)
    expect(n('c')).toBeGreaterThanOrEqual(145)
    expect(n('c')).toBeLessThanOrEqual(155)
    // Within a caller, first come first served.
    expect(ids.filter(id => id.startsWith('a-'))).toEqual(Array.from({ length: 200 }, (_, i) => `a-${i}`))
    expect(maxLag).toBeLessThanOrEqual(STEP_UNIT)
    expect(await fair.release({ now: 1, cap: 1, leaseMs: 1, defaultWeight: 1, weights, max: 1 })).toEqual([])
    expect(await h.redis.exists(k.fairReady, k.fairQueued, k.fairCallers, k.fairSlots)).toBe(0)
    await h.redis.del(k.fairLag)
  })
})
