/**
 * Model test (issue "Callbacks and reconciliation", Done-when): random multisets of callbacks, each duplicated
 * 1–5×, shuffled, posted concurrently to two app instances sharing one Redis, while CometAPI's query answers
 * at random. Whatever arrives: the state never moves backwards, ends at the upstream terminal state, and the
 * event log holds exactly one event per accepted transition, numbered without gaps.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import fc from 'fast-check'
import { randomBytes } from 'node:crypto'
import { Simulator, type SimStatus } from '../simulator/app.ts'
import { KEYS, startHarness, type Harness } from './helpers/harness.ts'
import { callbackPath, validBody } from './helpers/tasks.ts'
import { fromKling, isTerminal, type TaskStatus } from '../src/domain/task.ts'

const RANK: Record<TaskStatus, number> = {
  queued: 0, submitted: 1, processing: 2, succeeded: 3, failed: 3, canceled: 3
}

describe('callback storms against two replicas', () => {
  let sim: Simulator
  let a: Harness
  let b: Harness

  beforeAll(async () => {
    sim = new Simulator({ apiKey: KEYS.comet, auto: false })
    await sim.listen()
    const prefix = `model${randomBytes(4).toString('hex')}`
    // Reconciliation sweeps stay out of the way; confirmations of terminal callbacks still run on both replicas.
    const env = { REDIS_PREFIX: prefix, RECONCILE_INTERVAL_MS: '600000', RECONCILE_QPS: '10000' }
    a = await startHarness({ simulator: sim, env })
    b = await startHarness({ simulator: sim, env })
  })
  afterAll(async () => {
    await a.close()
    await b.close()
    await sim.close()
  })

  it('never moves backwards, ends at the upstream terminal state, one gap-free event per transition', async () => {
    let n = 0
    await fc.assert(fc.asyncProperty(
      fc.constantFrom<SimStatus>('succeed', 'failed'),
      fc.subarray<SimStatus>(['submitted', 'processing', 'succeed', 'failed'], { minLength: 0 }),
      fc.array(fc.integer({ min: 1, max: 5 }), { minLength: 4, maxLength: 4 }),
      fc.array(
        fc.constantFrom<'submitted' | 'processing' | 'final'>('submitted', 'processing', 'final'),
        { maxLength: 4 }
      ),
      fc.infiniteStream(fc.boolean()),
      fc.func(fc.integer()),
      async (final, delivered, copies, pollAnswers, replica, order) => {
        n++
        // A task already accepted upstream (the submit path has its own tests).
        const id = `model-${n}-${randomBytes(3).toString('hex')}`
        const ext = `ext-${id}`
        const store = a.app.deps.store
        const created = await store.create({
          id,
          caller: 'alice',
          createdAt: Date.now(),
          reference: null,
          metadata: null,
          request: validBody(),
          externalTaskId: ext,
          webhookUrl: null
        })
        expect(created.outcome).toBe('created')
        const up = sim.create({ ...validBody(), external_task_id: ext })
        await store.transition(id, t => t.status === 'queued'
          ? { to: 'submitted', upstream: { task_id: up.task_id, status: 'submitted', status_msg: null } }
          : null)

        // Upstream really ends at `final`. Its query answers meanwhile are random but never contradict it: they may
        // lag (an earlier state), as an eventually consistent upstream would. Callbacks may claim anything.
        up.status = final
        sim.faults = pollAnswers.map(s => ({
          on: 'query' as const, kind: 'status' as const, taskStatus: s === 'final' ? final : s, times: 1
        }))
        const bodies = delivered.flatMap((s, i) => Array.from({ length: copies[i] }, () => sim.taskView(up, s)))
        const keyed = bodies.map((body, i) => ({ body, key: order(i) }))
        keyed.sort((x, y) => x.key - y.key)
        const url = callbackPath(a, id)
        const answers = await Promise.all(keyed.map(async ({ body }) => {
          const target = replica.next().value ? a : b
          return (await target.app.inject({ method: 'POST', url, payload: body })).statusCode
        }))
        expect(answers.every(s => s === 200 || s === 202)).toBe(true)

        // Let the queued confirmations settle, then one reconciliation with upstream's true answer.
        sim.faults = []
        await a.app.deps.reconcile.checkTask(id)
        const task = await store.get(id)
        expect(task?.status).toBe(fromKling(final))

        const all = await store.events(id)
        expect(all.map(e => e.sequence)).toEqual(all.map((_, i) => i + 1))
        expect(task?.sequence).toBeLessThanOrEqual(all.length)
        // The result mirror may append `video.stored` after success; it is not a state change.
        const events = all.filter(e => e.type !== 'video.stored')
        expect(all.slice(events.length).every(e => e.type === 'video.stored')).toBe(true)
        for (let i = 1; i < events.length; i++) {
          expect(RANK[events[i].data.status]).toBeGreaterThan(RANK[events[i - 1].data.status])
        }
        expect(events.filter(e => isTerminal(e.data.status))).toHaveLength(1)
        expect(events.at(-1)?.type).toBe(`video.${fromKling(final)}`)
      }
    ), { numRuns: 200 })
    expect(n).toBeGreaterThanOrEqual(200)
  }, 120_000)
})
