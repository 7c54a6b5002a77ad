/**
 * Builds the real app against the run's real redis-server and a real simulator on loopback, each harness
 * under its own key prefix. Everything it starts it stops, and on close it checks that no secret it handed
 * out reached a log line.
 */
import { afterEach, inject } from 'vitest'
import { Writable } from 'node:stream'
import { randomBytes } from 'node:crypto'
import { buildApp, type App } from '../../src/app.ts'
import { loadConfig, type Config } from '../../src/config/index.ts'
import { createLogger } from '../../src/infra/logger.ts'
import { createRedis, waitReady, type RedisClient } from '../../src/infra/redis.ts'
import { Simulator, type SimOptions } from '../../simulator/app.ts'
import type { UpstreamAdapter } from '../../src/upstream/adapter.ts'
import { createUpstream } from '../../src/upstream/factory.ts'
import { DirectoryBlobStore } from '../../src/blobs/dir.ts'
import type { BlobStore } from '../../src/blobs/index.ts'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { assertContract, watchContract } from './contract.ts'

// Every response of every app built here is checked against openapi/openapi.json; close() fails on a mismatch.
watchContract()

/** Collects pino's JSON lines in memory. */
export class LogCapture extends Writable {
  lines: string[] = []
  override _write (chunk: Buffer, _enc: string, done: () => void) {
    this.lines.push(...chunk.toString().split('\n').filter(Boolean))
    done()
  }

  get text () { return this.lines.join('\n') }
}

export const KEYS = {
  alice: 'alice-key-0123456789abcdef',
  bob: 'bob-key-0123456789abcdef00',
  ops: 'ops-admin-key-0123456789ab',
  root: 'root-operator-key-0123456789',
  comet: 'sk-comet-test-' + randomBytes(8).toString('hex'),
  callbackSecret: randomBytes(32).toString('hex'),
  klingAccess: 'ak-kling-test-' + randomBytes(8).toString('hex'),
  klingSecret: 'sk-kling-test-' + randomBytes(16).toString('hex')
}

/** Env that makes a harness use the kling adapter (its simulator checks the JWTs against these keys). */
export const KLING_ENV = { UPSTREAM: 'kling', KLING_ACCESS_KEY: KEYS.klingAccess, KLING_SECRET_KEY: KEYS.klingSecret }

export interface Harness {
  app: App
  config: Config
  redis: RedisClient
  sim: Simulator
  logs: LogCapture
  prefix: string
  upstream: UpstreamAdapter
  blobs: BlobStore
  close: () => Promise<void>
}

export const auth = (who: 'alice' | 'bob' | 'ops' | 'root') => ({ authorization: `Bearer ${KEYS[who]}` })

/** Env a harness runs with; tests override single variables. */
export function testEnv (over: Record<string, string> = {}): Record<string, string> {
  return {
    REDIS_URL: inject('redisUrl'),
    REDIS_PREFIX: `t${randomBytes(6).toString('hex')}`,
    COMETAPI_KEY: KEYS.comet,
    CALLBACK_SECRET: KEYS.callbackSecret,
    API_KEYS: `alice:${KEYS.alice},bob:${KEYS.bob}`,
    ADMIN_API_KEYS: `ops:${KEYS.ops}`,
    // `root` is an operator: an admin that may also change other callers' resources (`ops` may only read them).
    OPERATOR_API_KEYS: `root:${KEYS.root}`,
    PUBLIC_BASE_URL: 'http://127.0.0.1:1',
    // The harness's PUBLIC_BASE_URL is on loopback, with a real upstream (the simulator behind COMETAPI_KEY).
    CALLBACK_ALLOW_INSECURE: 'true',
    WEBHOOK_ALLOW_PRIVATE: 'true',
    MIRROR_ALLOW_PRIVATE: 'true',
    LOG_LEVEL: 'info',
    ...over
  }
}

/**
 * The default blob directory of each REDIS_PREFIX, shared by every harness on it as the replicas of one deployment
 * must share one (BLOB_DRIVER=dir), and removed when the last of them closes.
 */
const blobDirs = new Map<string, { dir: string, users: number }>()
function takeBlobDir (prefix: string): string {
  const entry = blobDirs.get(prefix) ?? { dir: mkdtempSync(join(tmpdir(), 'kg-blobs-')), users: 0 }
  entry.users++
  blobDirs.set(prefix, entry)
  return entry.dir
}
function releaseBlobDir (prefix: string): void {
  const entry = blobDirs.get(prefix)
  if (entry === undefined || --entry.users > 0) return
  blobDirs.delete(prefix)
  rmSync(entry.dir, { recursive: true, force: true })
}

/**
 * `listen: true` puts the app on a loopback port and points PUBLIC_BASE_URL at it, so the simulator's callbacks
 * reach it over real HTTP. `keepKeys: true` leaves the prefix's Redis keys in place on close, so that a second
 * harness on the same REDIS_PREFIX can play the restarted replica (whoever sets it cleans up after).
 */
export interface HarnessOptions {
  env?: Record<string, string>
  sim?: SimOptions
  simulator?: Simulator
  workers?: boolean
  listen?: boolean
  blobs?: BlobStore
  keepKeys?: boolean
  /** The clock the kling adapter signs its tokens by. */
  upstreamClock?: () => number
  /** The app's clock (buildApp's `clock`). */
  clock?: () => number
}

export async function startHarness (opts: HarnessOptions = {}): Promise<Harness> {
  const simKeys = { apiKey: KEYS.comet, klingAccessKey: KEYS.klingAccess, klingSecretKey: KEYS.klingSecret }
  const sim = opts.simulator ?? new Simulator({ ...simKeys, ...opts.sim })
  if (sim.baseUrl === '') await sim.listen()
  const config = loadConfig(testEnv({ COMETAPI_BASE_URL: sim.baseUrl, KLING_BASE_URL: sim.baseUrl, ...opts.env }))
  const logs = new LogCapture()
  const redis = createRedis(config.redis, 'command')
  redis.on('error', () => {})
  await waitReady(redis)
  const queueConnection = createRedis(config.redis, 'worker')
  queueConnection.on('error', () => {})
  const upstream = await createUpstream(config, { clock: opts.upstreamClock })
  const blobs = opts.blobs ?? new DirectoryBlobStore(takeBlobDir(config.prefix))
  const release = () => { if (opts.blobs === undefined) releaseBlobDir(config.prefix) }
  let app: App
  try {
    const logger = createLogger(config.logLevel, logs)
    const clock = opts.clock === undefined ? {} : { clock: opts.clock }
    app = await buildApp({ config, redis, upstream, queueConnection, blobs, workers: opts.workers, logger, ...clock })
    await app.ready()
  } catch (err) {
    // A replica refused at start (e.g. BlobDirConflict) must not leave its connections and simulator behind.
    queueConnection.disconnect()
    redis.disconnect()
    await upstream.close()
    release()
    if (opts.simulator === undefined) await sim.close()
    throw err
  }
  if (opts.listen === true) config.publicBaseUrl = await app.listen({ host: '127.0.0.1', port: 0 })
  const close = async () => {
    await app.close()
    await queueConnection.quit()
    await upstream.close()
    release()
    if (opts.keepKeys !== true) {
      const keys = await redis.keys(`{${config.prefix}}:*`)
      if (keys.length > 0) await redis.del(...keys)
    }
    await redis.quit()
    if (opts.simulator === undefined) await sim.close()
    assertNoSecrets(logs.text)
    assertContract(app)
  }
  return { app, config, redis, sim, logs, prefix: config.prefix, upstream, blobs, close }
}

/** Fails when a key, secret, JWT or unredacted callback token is in the logs. */
export function assertNoSecrets (text: string) {
  for (const [name, secret] of Object.entries(KEYS)) {
    if (text.includes(secret)) throw new Error(`secret ${name} reached a log line`)
  }
  // A Kling API token: base64url of `{"alg"…` and of `{"iss"…`, dot-separated.
  if (/eyJ[\w-]+\.eyJ[\w-]+\./.test(text)) throw new Error('a JWT reached a log line')
  const token = /token=(?!\[REDACTED\])[^&"\s]+/.exec(text)
  if (token !== null) throw new Error('a callback token reached a log line')
}

/**
 * A `startHarness` for the block (or file) that calls this: every harness it starts is closed after each test,
 * in the order started.
 */
export function harnessPerTest (): typeof startHarness {
  const open: Harness[] = []
  afterEach(async () => { for (const h of open.splice(0)) await h.close() })
  return async (...args) => {
    const h = await startHarness(...args)
    open.push(h)
    return h
  }
}
