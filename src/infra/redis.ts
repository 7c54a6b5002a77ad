import { Redis, Cluster, type RedisOptions } from 'ioredis'
import type { Config } from '../config/index.ts'

export type RedisClient = Redis | Cluster

/**
 * One connection per role (aesthetics §8.10):
 * - `command`: the request path. Fails fast (one retry, 2 s command timeout) so a Redis outage is a quick 503,
 *   not a minute-long hang (perf-reliability §2.4).
 * - `worker`: BullMQ and blocking readers. Waits for Redis to come back (`maxRetriesPerRequest: null`).
 */
export function createRedis (redis: Config['redis'], role: 'command' | 'worker', name = role): RedisClient {
  const options: RedisOptions = role === 'command'
    ? { maxRetriesPerRequest: 1, commandTimeout: 2000, connectionName: `kg-${name}` }
    : { maxRetriesPerRequest: null, connectionName: `kg-${name}` }
  if (redis.clusterNodes !== undefined) {
    return new Cluster(redis.clusterNodes, { redisOptions: options, enableOfflineQueue: role === 'worker' })
  }
  if (redis.sentinels !== undefined) {
    return new Redis({ ...options, sentinels: redis.sentinels, name: redis.sentinelName })
  }
  return new Redis(redis.url ?? 'redis://127.0.0.1:6379', options)
}

/** Resolves once the client is ready, or rejects after `timeoutMs`. */
export async function waitReady (client: RedisClient, timeoutMs = 10_000): Promise<void> {
  if (client.status === 'ready') return
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { cleanup(); reject(new Error(`Redis not ready after ${timeoutMs} ms`)) }, timeoutMs)
    const onReady = () => { cleanup(); resolve() }
    const cleanup = () => { clearTimeout(timer); client.off('ready', onReady) }
    client.on('ready', onReady)
  })
}

/** A new connection with the same settings, not yet connected (it connects on first command or subscribe). */
export function duplicate (client: RedisClient): RedisClient {
  return client instanceof Cluster ? client.duplicate(undefined, { lazyConnect: true }) : client.duplicate({ lazyConnect: true })
}
