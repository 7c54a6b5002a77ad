import { Redis } from 'ioredis'
import { pino } from 'pino'
import { buildApp } from '../../src/app.ts'
import { loadConfig } from '../../src/config/index.ts'
import { CometApiAdapter } from '../../src/upstream/cometapi.ts'
import { DirectoryBlobStore } from '../../src/blobs/dir.ts'

/** The OpenAPI document as the routes declare it, built with inert deps (a Redis client that never connects). */
export async function renderOpenApi (): Promise<string> {
  const redis = new Redis({ lazyConnect: true })
  const upstream = new CometApiAdapter({ baseUrl: 'http://127.0.0.1:9', apiKey: 'inert', timeoutMs: 1000 })
  const app = await buildApp({
    config: loadConfig({}),
    redis,
    upstream,
    blobs: new DirectoryBlobStore('/nonexistent'),
    logger: pino({ level: 'silent' })
  })
  await app.ready()
  const doc = JSON.stringify(app.swagger(), null, 2) + '\n'
  await app.close()
  redis.disconnect()
  await upstream.close()
  return doc
}
