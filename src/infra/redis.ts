import { Redis, Cluster, type RedisOptions } from 'ioredis'
import type { RedisConfig } from '../config/index.ts'

export type RedisClient = Redis | Cluster

/** The request path's budget for one command; every retry setting below fits inside it. */
export const COMMAND_TIMEOUT_MS = 2000

/**
 * A replica that answers READONLY was a master a moment ago (a Sentinel failover): reconnect, which asks the
 * sentinels for the new master, and resend the command (2). Every script of ours is safe to run twice.
 */
const reconnectOnError = (err: Error): 2 | false => err.message.startsWith('READONLY') ? 2 : false

/**
 * One connection per role:
 * - `command`: the request path. Fails fast (one retry, 2 s command timeout) so a Redis outage is a quick 503,
 *   not a minute-long hang (ioredis 6 waits over a minute by default). Auto-pipelined: the commands that many
 *   requests send in one event-loop turn leave in one write (one syscall, one Redis read) instead of one each.
 * - `worker`: BullMQ and blocking readers. Waits for Redis to come back (`maxRetriesPerRequest: null`).
 * Cluster: redirections and cluster-down retries are bounded (6 × 200 ms) so a failover answers 503 within the
 * command budget instead of hanging or "Too many Cluster redirections" after seconds. Sentinel: the failover
 * detector subscribes to `+switch-master` and reconnects at once instead of writing to the old master.
 */
export function createRedis (redis: RedisConfig, role: 'command' | 'worker', name = role): RedisClient {
  const auth = {
    ...(redis.username !== undefined && { username: redis.username }),
    ...(redis.password !== undefined && { password: redis.password }),
    ...(redis.tls && { tls: {} })
  }
  const options: RedisOptions = {
    ...(role === 'command'
      ? { maxRetriesPerRequest: 1, commandTimeout: COMMAND_TIMEOUT_MS, enableAutoPipelining: true }
      : { maxRetriesPerRequest: null }),
    connectionName: `kg-${name}`,
    reconnectOnError
  }
  if (redis.clusterNodes !== undefined) {
    return countTrips(new Cluster(redis.clusterNodes, {
      redisOptions: { ...options, ...auth },
      enableOfflineQueue: role === 'worker',
      maxRedirections: 6,
      retryDelayOnFailover: 200,
      retryDelayOnClusterDown: 200,
      retryDelayOnTryAgain: 200,
      retryDelayOnMoved: 0,
      slotsRefreshTimeout: 1000,
      slotsRefreshInterval: 5000
    }))
  }
  if (redis.sentinels !== undefined) {
    return countTrips(new Redis({
      ...options,
      ...auth,
      sentinels: redis.sentinels,
      name: redis.sentinelName,
      failoverDetector: true,
      ...(redis.sentinelPassword !== undefined && { sentinelPassword: redis.sentinelPassword }),
      ...(redis.tls && { enableTLSForSentinelMode: true, sentinelTLS: {} })
    }))
  }
  const url = new URL(redis.url ?? 'redis://127.0.0.1:6379')
  // Credentials in the URL win; REDIS_USERNAME/REDIS_PASSWORD fill in what it leaves out.
  return countTrips(new Redis(url.toString(), {
    ...options,
    ...(url.password === '' && auth.password !== undefined && { password: auth.password }),
    ...(url.username === '' && auth.username !== undefined && { username: auth.username }),
    ...(redis.tls && url.protocol === 'redis:' && { tls: {} })
  }))
}

const TALLY = Symbol('kg.redisRoundTrips')
interface Tally { trips: number }
type Counted = RedisClient & { [TALLY]?: Tally }

/**
 * Round trips this client and every duplicate of it (BullMQ's blocking connections, the event readers) have
 * sent since it was made: one per command, except that a pipeline, a MULTI or an auto-pipelined batch leaves in
 * one write and is one trip. Read by `kg_redis_round_trips_total`; a cost figure, not a guarantee.
 */
export function roundTrips (client: RedisClient): number {
  return (client as Counted)[TALLY]?.trips ?? 0
}

/**
 * Counts at `sendCommand`, where every command passes (ioredis's own commands, scripts, BullMQ's calls). The
 * commands of one pipeline all come with the same pseudo-stream, so its first command counts the trip. A
 * duplicate shares the tally: what BullMQ duplicates is still this role's traffic.
 */
function countTrips<T extends RedisClient> (client: T, tally: Tally = { trips: 0 }): T {
  const counted = client as T & { [TALLY]?: Tally }
  counted[TALLY] = tally
  const batches = new WeakSet<object>()
  const send = client.sendCommand.bind(client) as (...args: unknown[]) => unknown
  Object.defineProperty(client, 'sendCommand', {
    configurable: true,
    writable: true,
    // Named parameters, not a rest and a spread: every command of the process passes here. All three: a Cluster's
    // pipeline names its node in the third (without it a keyless MULTI would go to any node).
    value: (command: unknown, stream?: { isPipeline?: boolean }, node?: unknown) => {
      if (stream?.isPipeline !== true) tally.trips++
      else if (!batches.has(stream)) { batches.add(stream); tally.trips++ }
      return send(command, stream, node)
    }
  })
  const dup = client.duplicate.bind(client) as (...args: unknown[]) => T
  Object.defineProperty(client, 'duplicate', {
    configurable: true,
    writable: true,
    value: (...args: unknown[]) => countTrips(dup(...args), tally)
  })
  return client
}

/** How the messages of isRedisUnavailable's errors start. */
const UNAVAILABLE_MESSAGES = [
  'Command timed out', 'Command aborted', 'Connection is closed', 'Stream isn\'t writeable',
  'Too many Cluster redirections', 'Cluster isn\'t ready', 'Failed to refresh slots cache',
  'None of startup nodes is available', 'All sentinels are unreachable',
  'CLUSTERDOWN', 'TRYAGAIN', 'MOVED', 'ASK', 'READONLY', 'LOADING', 'UNBLOCKED', 'MASTERDOWN', 'NOREPLICAS', 'BUSY',
  'MISCONF'
]
const UNAVAILABLE_RE = new RegExp(`^(${UNAVAILABLE_MESSAGES.join('|')})`)

/**
 * Errors that mean "Redis is briefly unavailable here": the client failing fast (timeout, retries exhausted,
 * connection down), a failover in progress (READONLY, a Cluster slot moving or down, a node loading its data),
 * or the durability rule not met in time. Answered 503 + Retry-After, never 500.
 */
export function isRedisUnavailable (err: Error): boolean {
  if (err.name === 'MaxRetriesPerRequestError' || err.name === 'ClusterAllFailedError') return true
  return UNAVAILABLE_RE.test(err.message)
}

/**
 * What a lone Redis node does to keep an acknowledged write: null when it is safe against a host crash (AOF with
 * `appendfsync always`), else a sentence saying what can be lost. Unknown (CONFIG disabled, as on managed
 * Redis) is said too. Only meaningful when no replica has to acknowledge writes.
 */
export async function persistenceWarning (client: RedisClient): Promise<string | null> {
  try {
    const [, appendonly] = await client.config('GET', 'appendonly') as string[]
    const [, fsync] = await client.config('GET', 'appendfsync') as string[]
    if (appendonly !== 'yes') return 'Redis has no AOF: a Redis restart loses every task since the last snapshot'
    if (fsync !== 'always') {
      return `Redis runs appendfsync ${fsync}: a host crash can lose the last second of accepted tasks ` +
        '(set appendfsync always, or REDIS_MIN_REPLICAS_ACKED with replicas)'
    }
    return null
  } catch {
    return 'could not read Redis persistence settings (CONFIG GET refused); make sure AOF runs with appendfsync always'
  }
}

/**
 * How many replicas a write must reach: a number as configured, or for `auto` every replica the master has now.
 * Not one of them: in a planned Sentinel failover the promoted replica stops copying the old master at once,
 * while the others still copy it until they are re-pointed, so a write only they hold is dropped on resync.
 */
export async function replicasToAck (client: RedisClient, rule: number | 'auto'): Promise<number> {
  if (rule !== 'auto') return rule
  const info = await client.info('replication')
  return Number(/connected_slaves:(\d+)/.exec(info)?.[1] ?? 0)
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
  return client instanceof Cluster
    ? client.duplicate(undefined, { lazyConnect: true })
    : client.duplicate({ lazyConnect: true })
}
