import { describe, it, expect, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startRedisServer } from '../src/infra/embedded-redis.ts'
import { startHarness } from './helpers/harness.ts'

describe('health', () => {
  const dirs: string[] = []
  afterAll(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }) })

  it('live is 200 and does not touch Redis', async () => {
    const h = await startHarness()
    const res = await h.app.inject('/health/live')
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({ status: 'ok' })
    await h.close()
  })

  it('ready answers 503 draining, or misconfigured with a reason, from the lifecycle; live stays 200', async () => {
    const h = await startHarness({ workers: false })
    try {
      const { lifecycle } = h.app.deps
      expect((await h.app.inject('/health/ready')).json()).toEqual({ status: 'ok', redis: 'ok' })
      lifecycle.fault = 'another replica has another blob directory'
      const bad = await h.app.inject('/health/ready')
      expect(bad.statusCode).toBe(503)
      expect(bad.json()).toEqual({ status: 'misconfigured', reason: 'another replica has another blob directory' })
      lifecycle.draining = true
      const draining = await h.app.inject('/health/ready')
      expect(draining.statusCode).toBe(503)
      expect(draining.json()).toEqual({ status: 'draining' })
      expect((await h.app.inject('/health/live')).statusCode).toBe(200)
      lifecycle.draining = false
      lifecycle.fault = null
      expect((await h.app.inject('/health/ready')).statusCode).toBe(200)
    } finally {
      await h.close()
    }
  })

  it('ready flips to 503 within 2 s when its Redis stops, and back to 200 when it returns', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kg-health-'))
    dirs.push(dir)
    let redis = await startRedisServer({ dir, persist: false })
    // Readiness is about the request path; this replica runs no workers (their shutdown after a Redis restart is
    // bounded separately, see src/jobs/close.ts).
    const h = await startHarness({ env: { REDIS_URL: redis.url }, workers: false })
    try {
      expect((await h.app.inject('/health/ready')).statusCode).toBe(200)

      await redis.stop()
      const started = Date.now()
      const down = await h.app.inject('/health/ready')
      expect(down.statusCode).toBe(503)
      expect(Date.now() - started).toBeLessThan(2000)
      expect(down.headers['retry-after']).toBe('1')

      redis = await startRedisServer({ dir, port: redis.port, persist: false })
      let status = 0
      for (let i = 0; i < 100 && status !== 200; i++) {
        await new Promise(resolve => setTimeout(resolve, 100))
        status = (await h.app.inject('/health/ready')).statusCode
      }
      expect(status).toBe(200)
    } finally {
      await h.close()
      await redis.stop()
    }
  })
})
