/**
 * The process entry and the only file that listens or handles signals. With nothing configured it runs a
 * complete development gateway: an embedded redis-server (AOF on, data under DATA_DIR) and the CometAPI
 * simulator as upstream. Shutdown: on SIGTERM/SIGINT readiness turns 503 for SHUTDOWN_DRAIN_MS while everything
 * else is still served (load balancers need that long to notice), then the ordered close: stop intake
 * (app.close), then the connections and children we made. A second signal skips the rest of the drain; a signal
 * during the close exits at once.
 */
import closeWithGrace from 'close-with-grace'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { buildApp } from './app.ts'
import { ConfigError, loadConfig, type Config } from './config/index.ts'
import { createLogger } from './infra/logger.ts'
import { createRedis, persistenceWarning, waitReady } from './infra/redis.ts'
import { RedisServerMissing } from './infra/embedded-redis.ts'
import { acquireDataDirRedis, DataDirBusy } from './infra/data-dir-redis.ts'
import { loadDevKey } from './infra/dev-key.ts'
import { loadEnvFile } from './infra/env-file.ts'
import { logConnectionState } from './infra/redis-log.ts'
import { createHash } from 'node:crypto'
import { createUpstream } from './upstream/factory.ts'
import { createBlobStore } from './blobs/factory.ts'
import { newLifecycle } from './lifecycle.ts'
import { BlobDirConflict } from './store/replicas.ts'

let config: Config
let envFile: ReturnType<typeof loadEnvFile> | undefined
try {
  // `.env` in the working directory (the README's "see .env.example"); the real environment wins.
  envFile = loadEnvFile()
  config = loadConfig(process.env)
} catch (err) {
  if (!(err instanceof ConfigError)) throw err
  console.error(err.message)
  process.exit(1)
}

class PortInUse extends Error {}

const logger = createLogger(config.logLevel)
if (envFile !== undefined && envFile.names.length > 0) {
  logger.info({ file: envFile.path, variables: envFile.names.length }, 'read .env (the environment wins)')
}
const cleanups: Array<() => Promise<unknown>> = []
const lifecycle = newLifecycle()
let listening = false
let phase: 'running' | 'draining' | 'closing' = 'running'
let endDrain: (() => void) | undefined

// close-with-grace keeps errors and normal exit; SIGTERM and SIGINT are ours, because it exits 1 on a second signal,
// and during the drain a second signal must mean "close now, in order". Installed before anything starts, so a
// signal during start-up still stops what was already started (the embedded redis-server above all); each step
// pushes its own cleanup to the front, so they run in reverse order.
const DRAIN_SIGNALS: ['SIGTERM', 'SIGINT'] = ['SIGTERM', 'SIGINT']
const grace = closeWithGrace({ delay: config.shutdownGraceMs, logger, skip: DRAIN_SIGNALS }, async ({ err }) => {
  phase = 'closing'
  if (err !== undefined) logger.error({ err }, 'closing on error')
  else logger.info('closing')
  for (const cleanup of cleanups) await cleanup().catch(e => logger.warn({ err: e }, 'cleanup failed'))
})

async function drainThenClose (signal: NodeJS.Signals): Promise<void> {
  // Before the listener is up nobody routes traffic here, so there is nothing to drain.
  if (listening && config.shutdownDrainMs > 0) {
    lifecycle.draining = true
    logger.info({ signal, drainMs: config.shutdownDrainMs }, 'draining: readiness answers 503, still serving')
    await new Promise<void>(resolve => {
      const timer = setTimeout(() => endDrain?.(), config.shutdownDrainMs)
      endDrain = () => { clearTimeout(timer); endDrain = undefined; resolve() }
    })
  } else {
    logger.info({ signal }, 'signal received')
  }
  if (phase === 'draining') await grace.close()
}

function onSignal (signal: NodeJS.Signals): void {
  if (phase === 'running') {
    phase = 'draining'
    drainThenClose(signal).catch((err: unknown) => { logger.error({ err }, 'shutdown failed'); process.exit(1) })
  } else if (phase === 'draining') {
    logger.warn({ signal }, 'second signal: skipping the rest of the drain')
    endDrain?.()
  } else {
    logger.error({ signal }, 'signal during the close: exiting now')
    process.exit(1)
  }
}
for (const signal of DRAIN_SIGNALS) process.on(signal, onSignal)

try {
  const redisUnset = config.redis.url === undefined && config.redis.clusterNodes === undefined &&
    config.redis.sentinels === undefined
  if (redisUnset) {
    // One redis-server per DATA_DIR: a second gateway on it joins as another replica, and the last one stops it.
    const embedded = await acquireDataDirRedis(config.dataDir)
    cleanups.unshift(async () => { logger.info(await embedded.release()) })
    config.redis.url = embedded.url
    logger.info(
      { url: embedded.url, dir: join(config.dataDir, 'redis'), others: embedded.others },
      !embedded.joined
        ? 'REDIS_URL is not set: started an embedded redis-server (AOF, appendfsync always)'
        : embedded.others.length > 0
          ? 'REDIS_URL is not set: joined the embedded redis-server of DATA_DIR (this gateway is another replica)'
          : 'REDIS_URL is not set: adopted the embedded redis-server a stopped gateway left running on DATA_DIR'
    )
  }
  // The simulator is imported by the factory only when it is the upstream: a production process never loads it.
  const upstream = await createUpstream(config)
  cleanups.unshift(() => upstream.close())
  if (upstream.name === 'simulator') {
    // The simulator's result videos are on loopback: let the result copy fetch them.
    config.copy.allowPrivate = true
    const { processingAfterMs, finishAfterMs } = config.upstream.simulator
    logger.warn({ url: upstream.baseUrl, processingAfterMs, finishAfterMs },
      'UPSTREAM=simulator (the default without COMETAPI_KEY or Kling keys): ' +
      'UPSTREAM IS THE BUILT-IN SIMULATOR, no real videos will be made; its control API (README, "Simulator") ' +
      `is at ${upstream.baseUrl}/_sim, e.g. curl ${upstream.baseUrl}/_sim/tasks`)
  } else {
    logger.info({ upstream: upstream.name, url: upstream.baseUrl }, 'upstream')
  }
  config.callbackSecret ??= randomBytes(32).toString('hex')
  let devKey: string | undefined
  if (config.apiKeys.length === 0) {
    devKey = (await loadDevKey(config.dataDir)).key
    // The only key of a development gateway, so it may do everything: an operator.
    config.apiKeys.push({
      caller: 'dev', sha256: createHash('sha256').update(devKey).digest(), admin: true, operator: true
    })
  }

  const redis = createRedis(config.redis, 'command')
  logConnectionState(redis, logger, 'redis')
  cleanups.unshift(async () => { await redis.quit().catch(() => redis.disconnect()) })
  await waitReady(redis, 30_000)
  if (config.redis.minReplicasAcked === 0 && config.redis.clusterNodes === undefined) {
    const warning = await persistenceWarning(redis)
    if (warning !== null) logger.warn(warning)
  }
  const queueConnection = createRedis(config.redis, 'worker')
  logConnectionState(queueConnection, logger, 'redis (queues)')
  cleanups.unshift(async () => { await queueConnection.quit().catch(() => queueConnection.disconnect()) })
  const blobs = createBlobStore(config.blobs)
  cleanups.unshift(() => blobs.close())

  const app = await buildApp({ config, redis, logger, upstream, queueConnection, blobs, lifecycle })
  cleanups.unshift(() => app.close())
  const address = await app.listen({ host: config.host, port: config.port }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'EADDRINUSE') throw err
    throw new PortInUse(`PORT=${config.port} is in use (another gateway?): set another PORT; ` +
      'a second gateway on the same DATA_DIR shares its embedded Redis')
  })
  listening = true
  const port = new URL(address).port
  config.publicBaseUrl ??= `http://127.0.0.1:${port}`
  const local = `http://127.0.0.1:${port}`
  logger.info(`kling-gateway listening: API ${local}/v1  docs ${local}/docs`)
  if (devKey !== undefined) {
    // Printed on purpose: a development key only exists when API_KEYS is unset; it is kept in DATA_DIR/dev-key.
    console.log(
      `\n  API     ${local}/v1/videos\n  Docs    ${local}/docs\n  Dev key ${devKey}\n` +
      '          an OPERATOR key (reads and changes every caller\'s tasks, endpoints and deliveries); the same\n' +
      `          after a restart (${join(config.dataDir, 'dev-key')}); new one: npm run dev-key -- --rotate\n` +
      `  Try     curl -H 'authorization: Bearer ${devKey}' ${local}/v1/videos\n`
    )
  }
} catch (err) {
  if (err instanceof RedisServerMissing || err instanceof BlobDirConflict || err instanceof DataDirBusy ||
    err instanceof PortInUse) {
    console.error(err.message)
  } else {
    logger.error({ err }, 'failed to start')
  }
  for (const cleanup of cleanups) await cleanup().catch(() => {})
  process.exit(1)
}
