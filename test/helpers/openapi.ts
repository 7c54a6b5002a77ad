import { Redis } from 'ioredis'
import { pino } from 'pino'
import { buildApp } from '../../src/app.ts'
import { loadConfig } from '../../src/config/index.ts'

/** The OpenAPI document as the routes declare it, built with inert deps (a Redis client that never connects). */
export async function renderOpenApi (): Promise<string> {
  const redis = new Redis({ lazyConnect: true })
  const app = await buildApp({ config: loadConfig({}), redis, logger: pino({ level: 'silent' }) })
  await app.ready()
  const doc = JSON.stringify(app.swagger(), null, 2) + '\n'
  await app.close()
  redis.disconnect()
  return doc
}
