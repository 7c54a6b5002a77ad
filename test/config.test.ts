import { describe, it, expect } from 'vitest'
import { ConfigError, loadConfig, parseDurations } from '../src/config/index.ts'

describe('loadConfig', () => {
  it('gives the documented defaults for an empty environment', () => {
    const c = loadConfig({})
    expect(c.port).toBe(3000)
    expect(c.host).toBe('0.0.0.0')
    expect(c.prefix).toBe('kg')
    expect(c.upstream).toEqual({
      name: 'simulator',
      cometapi: { baseUrl: 'https://api.cometapi.com', key: undefined },
      kling: { baseUrl: 'https://api-singapore.klingai.com', accessKey: undefined, secretKey: undefined },
      simulator: { port: undefined, processingAfterMs: 3000, finishAfterMs: 20_000, failRatio: 0 },
      concurrency: 8,
      timeoutMs: 30_000,
      retryBaseMs: 1000,
      submitAttempts: 12,
      unconfirmedGraceMs: 30_000,
      pauseCheckMs: 60_000
    })
    expect(c.allowedModels).toEqual(['kling-v1-6'])
    expect(c.reconcile).toEqual({ intervalMs: 30_000, afterMs: 60_000, deadlineMs: 3_600_000, batch: 1000, qps: 20 })
    expect(c.webhooks.retryScheduleMs)
      .toEqual([0, 5000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000])
    expect(c.webhooks.allowPrivate).toBe(false)
    expect(c.apiKeys).toEqual([])
  })

  it('names every bad variable in one error, without echoing values', () => {
    const secretish = 'not-a-url-but-secret-looking'
    let err: unknown
    try {
      loadConfig({
        PORT: 'eighty',
        REDIS_URL: secretish,
        UPSTREAM_CONCURRENCY: '0',
        WEBHOOK_RETRY_SCHEDULE: '5x',
        LOG_LEVEL: 'loud',
        COMETAPI_KEY: 'sk-1'
      })
    } catch (e) { err = e }
    expect(err).toBeInstanceOf(ConfigError)
    const problems = (err as ConfigError).problems.join('\n')
    const named = [
      'PORT', 'REDIS_URL', 'UPSTREAM_CONCURRENCY', 'WEBHOOK_RETRY_SCHEDULE', 'LOG_LEVEL', 'CALLBACK_SECRET'
    ]
    for (const name of named) {
      expect(problems).toContain(name)
    }
    expect((err as Error).message).not.toContain(secretish)
    expect((err as Error).message).not.toContain('sk-1')
  })

  it('treats empty variables as unset and converts types', () => {
    const c = loadConfig({
      PORT: '', WEBHOOK_ALLOW_PRIVATE: 'true', UPSTREAM_CONCURRENCY: '3', ALLOWED_MODELS: 'kling-v1-6,kling-v2'
    })
    expect(c.port).toBe(3000)
    expect(c.webhooks.allowPrivate).toBe(true)
    expect(c.upstream.concurrency).toBe(3)
    expect(c.allowedModels).toEqual(['kling-v1-6', 'kling-v2'])
  })

  it('parses API keys, plain or as sha256, and refuses short ones by position only', () => {
    const c = loadConfig({
      API_KEYS: `a:0123456789abcdef0123,b:sha256:${'ab'.repeat(32)}`, ADMIN_API_KEYS: 'ops:zzzzzzzzzzzzzzzzzzzz'
    })
    expect(c.apiKeys.map(k => [k.caller, k.admin])).toEqual([['a', false], ['b', false], ['ops', true]])
    expect(c.apiKeys[1].sha256.toString('hex')).toBe('ab'.repeat(32))
    expect(() => loadConfig({ API_KEYS: 'a:short' })).toThrow(/API_KEYS: entry 1/)
    expect(() => loadConfig({ API_KEYS: 'a:short' })).not.toThrow(/short/)
  })

  it('accepts one Redis topology at a time and requires the sentinel name', () => {
    expect(() => loadConfig({ REDIS_URL: 'redis://x:1', REDIS_CLUSTER_NODES: 'a:1' })).toThrow(/only one/)
    expect(() => loadConfig({ REDIS_SENTINELS: 'a:1,b:2' })).toThrow(/REDIS_SENTINEL_NAME/)
    expect(loadConfig({ REDIS_CLUSTER_NODES: 'a:1,b:2' }).redis.clusterNodes)
      .toEqual([{ host: 'a', port: 1 }, { host: 'b', port: 2 }])
  })

  it('sets the durability rule: auto with Sentinel, 0 otherwise, a number or auto when given; auth and TLS', () => {
    expect(loadConfig({}).redis.minReplicasAcked).toBe(0)
    expect(loadConfig({ REDIS_SENTINELS: 'a:1', REDIS_SENTINEL_NAME: 'm' }).redis.minReplicasAcked).toBe('auto')
    expect(loadConfig({ REDIS_CLUSTER_NODES: 'a:1', REDIS_MIN_REPLICAS_ACKED: '1' }).redis.minReplicasAcked).toBe(1)
    expect(loadConfig({ REDIS_MIN_REPLICAS_ACKED: 'auto' }).redis.minReplicasAcked).toBe('auto')
    expect(() => loadConfig({ REDIS_MIN_REPLICAS_ACKED: 'many' })).toThrow(/REDIS_MIN_REPLICAS_ACKED/)
    expect(() => loadConfig({ REDIS_ACK_TIMEOUT_MS: '5000' })).toThrow(/REDIS_ACK_TIMEOUT_MS/)
    const c = loadConfig({ REDIS_CLUSTER_NODES: 'a:1', REDIS_PASSWORD: 'p4ss-word', REDIS_TLS: 'true' })
    expect(c.redis).toMatchObject({ password: 'p4ss-word', tls: true, ackTimeoutMs: 500 })
  })

  describe('UPSTREAM', () => {
    const secret = { CALLBACK_SECRET: 'c'.repeat(32), PUBLIC_BASE_URL: 'https://gateway.example.com' }
    const kling = { KLING_ACCESS_KEY: 'ak-config-test-0001', KLING_SECRET_KEY: 'sk-config-test-secret-0001' }
    const problemsOf = (env: Record<string, string>): string => {
      try {
        loadConfig(env)
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError)
        return (err as ConfigError).problems.join('\n')
      }
      throw new Error('expected a ConfigError')
    }

    it('keeps existing configurations: COMETAPI_KEY alone is cometapi, nothing at all is the simulator', () => {
      expect(loadConfig({ COMETAPI_KEY: 'sk-1', ...secret }).upstream.name).toBe('cometapi')
      expect(loadConfig({ COMETAPI_KEY: 'sk-1', COMETAPI_BASE_URL: 'http://sim:4010/', ...secret }).upstream.cometapi)
        .toEqual({ baseUrl: 'http://sim:4010', key: 'sk-1' })
      expect(loadConfig({}).upstream.name).toBe('simulator')
    })

    it('is the Kling keys\' upstream when only they are set, and whatever UPSTREAM says when it is set', () => {
      const { KLING_ACCESS_KEY: accessKey, KLING_SECRET_KEY: secretKey } = kling
      expect(loadConfig({ ...kling, ...secret }).upstream).toMatchObject({
        name: 'kling', kling: { baseUrl: 'https://api-singapore.klingai.com', accessKey, secretKey }
      })
      const elsewhere = loadConfig({ UPSTREAM: 'kling', KLING_BASE_URL: 'https://kling.example/', ...kling, ...secret })
      expect(elsewhere.upstream.kling.baseUrl).toBe('https://kling.example')
      expect(loadConfig({ UPSTREAM: 'simulator', COMETAPI_KEY: 'sk-1' }).upstream.name).toBe('simulator')
      const both = loadConfig({ UPSTREAM: 'cometapi', COMETAPI_KEY: 'sk-1', ...kling, ...secret })
      expect(both.upstream.name).toBe('cometapi')
    })

    it('names every variable the chosen upstream lacks, never a value', () => {
      const k = problemsOf({ UPSTREAM: 'kling' })
      for (const name of ['KLING_ACCESS_KEY', 'KLING_SECRET_KEY', 'CALLBACK_SECRET']) expect(k).toContain(name)
      expect(problemsOf({ UPSTREAM: 'kling', KLING_ACCESS_KEY: kling.KLING_ACCESS_KEY, ...secret }))
        .toBe('KLING_SECRET_KEY: required with UPSTREAM=kling')
      const onlySecret = problemsOf({ KLING_SECRET_KEY: kling.KLING_SECRET_KEY })
      expect(onlySecret).toContain('KLING_ACCESS_KEY')
      expect(onlySecret).not.toContain(kling.KLING_SECRET_KEY)
      expect(problemsOf({ UPSTREAM: 'cometapi', ...secret })).toBe('COMETAPI_KEY: required with UPSTREAM=cometapi')
      expect(problemsOf({ UPSTREAM: 'openai' })).toMatch(/^UPSTREAM: /)
    })

    it('refuses to guess between COMETAPI_KEY and the Kling keys', () => {
      const p = problemsOf({ COMETAPI_KEY: 'sk-comet-secret-1', ...kling, ...secret })
      expect(p).toMatch(/^UPSTREAM: required/)
      for (const value of ['sk-comet-secret-1', kling.KLING_ACCESS_KEY, kling.KLING_SECRET_KEY]) {
        expect(p).not.toContain(value)
      }
    })
  })

  it('parses duration lists with units', () => {
    expect(parseDurations('0,250ms,5s,5m,2h,7')).toEqual([0, 250, 5000, 300_000, 7_200_000, 7])
  })
})
