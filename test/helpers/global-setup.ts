import type { TestProject } from 'vitest/node'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startRedisServer } from '../../src/infra/embedded-redis.ts'

declare module 'vitest' {
  export interface ProvidedContext { redisUrl: string }
}

/** One redis-server for the whole run; every test file works under its own key prefix. */
export default async function setup (project: TestProject) {
  const dir = await mkdtemp(join(tmpdir(), 'kg-test-redis-'))
  const redis = await startRedisServer({ dir, persist: false })
  project.provide('redisUrl', redis.url)
  return async () => {
    await redis.stop()
    await rm(dir, { recursive: true, force: true })
  }
}
