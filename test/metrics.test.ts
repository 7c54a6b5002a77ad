import { describe, it, expect } from 'vitest'
import { startHarness } from './helpers/harness.ts'
import { createTask, waitFor } from './helpers/tasks.ts'

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
