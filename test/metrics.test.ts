import { describe, it, expect } from 'vitest'
import { startHarness } from './helpers/harness.ts'
import { createTask, waitFor } from './helpers/tasks.ts'
import { duplicate, roundTrips } from '../src/infra/redis.ts'

describe('GET /metrics', () => {
  it('exposes request counts, tasks by status and queue depths in Prometheus text', async () => {
    const h = await startHarness({ sim: { auto: false } })
    try {
      const task = await createTask(h)
      await waitFor(h, task.id, t => t.status === 'submitted')
      const res = await h.app.inject('/metrics')
      expect(res.statusCode).toBe(200)
      expect(res.headers['content-type']).toMatch(/^text\/plain/)
      expect(res.body).toMatch(/kg_http_requests_total\{method="POST",route="\/v1\/videos",status="202"\} 1/)
      expect(res.body).toMatch(/kg_tasks\{status="submitted"\} 1/)
      expect(res.body).toMatch(/kg_tasks\{status="queued"\} 0/)
      expect(res.body).toMatch(/kg_queue_jobs\{queue="submit",state="waiting"\} 0/)
      expect(res.body).toContain('kg_parked_bytes 0')
      expect(res.body).toContain('process_resident_memory_bytes')
    } finally {
      await h.close()
    }
  })
})

describe('kg_redis_round_trips_total', () => {
  const trips = (body: string, connection: string) =>
    Number(new RegExp(`kg_redis_round_trips_total\\{connection="${connection}"\\} (\\d+)`).exec(body)?.[1] ?? NaN)

  it('counts a command as one trip and a pipeline, a MULTI or an auto-pipelined batch as one', async () => {
    const h = await startHarness({ workers: false })
    try {
      const { redis, prefix } = h
      const key = `{${prefix}}:trips-test`
      const before = roundTrips(redis)
      await redis.set(key, '1')
      expect(roundTrips(redis) - before).toBe(1)

      const p0 = roundTrips(redis)
      const pipeline = redis.pipeline()
      for (let i = 0; i < 20; i++) pipeline.incr(key)
      await pipeline.exec()
      expect(roundTrips(redis) - p0).toBe(1)

      const m0 = roundTrips(redis)
      await redis.multi().incr(key).incr(key).exec()
      expect(roundTrips(redis) - m0).toBe(1)

      // The command connection auto-pipelines: what one event-loop turn sends leaves in one write.
      const a0 = roundTrips(redis)
      await Promise.all(Array.from({ length: 10 }, () => redis.get(key)))
      expect(roundTrips(redis) - a0).toBe(1)

      // A duplicate (BullMQ's blocking connections, the event readers) counts into its origin's tally.
      const dup = duplicate(redis)
      try {
        const d0 = roundTrips(redis)
        await dup.get(key)
        expect(roundTrips(redis) - d0).toBeGreaterThanOrEqual(1)
      } finally {
        dup.disconnect()
      }

      // The scrape reads Redis too (task counts, queue depths), so the figure lies between these two.
      const r0 = roundTrips(redis)
      const res = await h.app.inject('/metrics')
      expect(trips(res.body, 'command')).toBeGreaterThanOrEqual(r0)
      expect(trips(res.body, 'command')).toBeLessThanOrEqual(roundTrips(redis))
      expect(trips(res.body, 'worker')).toBeGreaterThanOrEqual(0)
    } finally {
      await h.close()
    }
  })
})
