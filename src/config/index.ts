import { Type, type Static } from 'typebox'
import { Value } from 'typebox/value'
import { createHash } from 'node:crypto'
import { isIP } from 'node:net'
import { isForbiddenAddress, isInternalName } from '../notify/ssrf.ts'
import { parseModelTable, type ModelTable } from '../domain/models.ts'
import { parseCallerLimits, parseUnits, type CallersConfig } from './callers.ts'

/** Who makes the videos: an adapter each in src/upstream (UPSTREAM). */
export const UPSTREAM_NAMES = ['cometapi', 'kling', 'simulator'] as const
export type UpstreamName = typeof UPSTREAM_NAMES[number]

/** Every variable the service reads, as strings from the environment (docs/API.md, "Configuration"). */
export const EnvSchema = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 3000 }),
  HOST: Type.String({ minLength: 1, default: '0.0.0.0' }),
  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://' })),
  REDIS_CLUSTER_NODES: Type.Optional(Type.String({ pattern: '^[^,:\\s]+:\\d+(,[^,:\\s]+:\\d+)*$' })),
  REDIS_SENTINELS: Type.Optional(Type.String({ pattern: '^[^,:\\s]+:\\d+(,[^,:\\s]+:\\d+)*$' })),
  REDIS_SENTINEL_NAME: Type.Optional(Type.String({ minLength: 1 })),
  REDIS_PREFIX: Type.String({ pattern: '^[A-Za-z0-9_.-]{1,32}$', default: 'kg' }),
  REDIS_USERNAME: Type.Optional(Type.String({ minLength: 1 })),
  REDIS_PASSWORD: Type.Optional(Type.String({ minLength: 1 })),
  REDIS_TLS: Type.Boolean({ default: false }),
  REDIS_SENTINEL_PASSWORD: Type.Optional(Type.String({ minLength: 1 })),
  REDIS_MIN_REPLICAS_ACKED: Type.Optional(
    Type.Union([Type.Integer({ minimum: 0, maximum: 16 }), Type.Literal('auto')])
  ),
  REDIS_ACK_TIMEOUT_MS: Type.Integer({ minimum: 10, maximum: 1500, default: 500 }),
  COMETAPI_BASE_URL: Type.String({ pattern: '^https?://[^/]+', default: 'https://api.cometapi.com' }),
  COMETAPI_KEY: Type.Optional(Type.String({ minLength: 1 })),
  UPSTREAM: Type.Optional(Type.Union(UPSTREAM_NAMES.map(n => Type.Literal(n)))),
  // Kling's API host for callers outside China (Kling's API reference, "Domain").
  KLING_BASE_URL: Type.String({ pattern: '^https?://[^/]+', default: 'https://api-singapore.klingai.com' }),
  KLING_ACCESS_KEY: Type.Optional(Type.String({ minLength: 1 })),
  KLING_SECRET_KEY: Type.Optional(Type.String({ minLength: 1 })),
  // UPSTREAM=simulator only: the built-in simulator's pace (a demo's, ~20 s to done), failures and port.
  SIMULATOR_PROCESSING_AFTER_MS: Type.Integer({ minimum: 0, maximum: 3_600_000, default: 3000 }),
  SIMULATOR_FINISH_AFTER_MS: Type.Integer({ minimum: 0, maximum: 3_600_000, default: 20_000 }),
  SIMULATOR_FAIL_RATIO: Type.Number({ minimum: 0, maximum: 1, default: 0 }),
  SIMULATOR_PORT: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535 })),
  PUBLIC_BASE_URL: Type.Optional(Type.String({ pattern: '^https?://[^/]+' })),
  CALLBACK_SECRET: Type.Optional(Type.String({ minLength: 32 })),
  // Earlier CALLBACK_SECRETs, comma-separated: they still verify callback tokens (never sign) while tasks need them.
  CALLBACK_SECRETS_PREVIOUS: Type.Optional(Type.String({ pattern: '^[^,]{32,}(,[^,]{32,})*$' })),
  // On-prem upstreams and tests only: lets a real upstream call back over http or to a private address.
  CALLBACK_ALLOW_INSECURE: Type.Boolean({ default: false }),
  API_KEYS: Type.Optional(Type.String({ minLength: 1 })),
  ADMIN_API_KEYS: Type.Optional(Type.String({ minLength: 1 })),
  // Admin keys that may also change other callers' resources (cancel, resolve, endpoints, delivery retries).
  OPERATOR_API_KEYS: Type.Optional(Type.String({ minLength: 1 })),
  ALLOWED_MODELS: Type.String({ pattern: '^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$', default: 'kling-v1-6' }),
  // JSON: what each model does on each kind (src/domain/models.ts); each kind given replaces its default entry.
  MODEL_CAPABILITIES: Type.Optional(Type.String({ minLength: 1 })),
  UPSTREAM_CONCURRENCY: Type.Integer({ minimum: 1, maximum: 1000, default: 8 }),
  UPSTREAM_TIMEOUT_MS: Type.Integer({ minimum: 10, maximum: 600_000, default: 30_000 }),
  UPSTREAM_RETRY_BASE_MS: Type.Integer({ minimum: 1, maximum: 600_000, default: 1000 }),
  UPSTREAM_SUBMIT_ATTEMPTS: Type.Integer({ minimum: 1, maximum: 100, default: 12 }),
  SUBMIT_UNCONFIRMED_GRACE_MS: Type.Integer({ minimum: 0, default: 30_000 }),
  // While the submit queue is paused for an account problem, how often one replica checks whether it is over.
  UPSTREAM_PAUSE_CHECK_MS: Type.Integer({ minimum: 10, maximum: 3_600_000, default: 60_000 }),
  RECONCILE_INTERVAL_MS: Type.Integer({ minimum: 10, default: 30_000 }),
  RECONCILE_AFTER_MS: Type.Integer({ minimum: 0, default: 60_000 }),
  TASK_DEADLINE_MS: Type.Integer({ minimum: 1000, default: 3_600_000 }),
  RECONCILE_BATCH: Type.Integer({ minimum: 1, maximum: 100_000, default: 1000 }),
  RECONCILE_QPS: Type.Integer({ minimum: 1, maximum: 10_000, default: 20 }),
  WEBHOOK_RETRY_SCHEDULE: Type.String({
    pattern: '^\\d+(ms|s|m|h)?(,\\d+(ms|s|m|h)?)*$',
    default: '0,5s,5m,30m,2h,5h,10h,10h'
  }),
  WEBHOOK_TIMEOUT_MS: Type.Integer({ minimum: 10, maximum: 600_000, default: 15_000 }),
  WEBHOOK_ALLOW_PRIVATE: Type.Boolean({ default: false }),
  WEBHOOK_ALLOWED_PORTS: Type.String({ pattern: '^\\s*\\d{1,5}(\\s*,\\s*\\d{1,5})*\\s*$', default: '443,8443' }),
  // Browser origins allowed by CORS, comma-separated (`*` = any); empty = no CORS headers at all.
  CORS_ORIGINS: Type.String({
    pattern: '^\\s*(\\*|https?://[^\\s,/]+)?(\\s*,\\s*https?://[^\\s,/]+)*\\s*$', default: ''
  }),
  // Key of signed content/events links (src/services/links.ts); unset = derived from CALLBACK_SECRET.
  LINK_SECRET: Type.Optional(Type.String({ minLength: 32 })),
  LINK_TTL_S: Type.Integer({ minimum: 10, maximum: 86_400, default: 900 }),
  LOG_LEVEL: Type.Union(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map(l => Type.Literal(l)),
    { default: 'info' }
  ),
  DATA_DIR: Type.String({ minLength: 1, default: '.data' }),
  CREATE_BODY_LIMIT_BYTES: Type.Integer({ minimum: 1024, default: 60 * 1024 * 1024 }),
  SHUTDOWN_GRACE_MS: Type.Integer({ minimum: 0, default: 10_000 }),
  SHUTDOWN_DRAIN_MS: Type.Integer({ minimum: 0, maximum: 600_000, default: 5000 }),
  SSE_HEARTBEAT_MS: Type.Integer({ minimum: 10, maximum: 600_000, default: 15_000 }),
  BLOB_DRIVER: Type.Union([Type.Literal('dir'), Type.Literal('s3')], { default: 'dir' }),
  BLOB_DIR: Type.Optional(Type.String({ minLength: 1 })),
  S3_BUCKET: Type.Optional(Type.String({ minLength: 3, maxLength: 63 })),
  S3_ENDPOINT: Type.Optional(Type.String({ pattern: '^https?://' })),
  S3_REGION: Type.String({ minLength: 1, default: 'us-east-1' }),
  S3_ACCESS_KEY_ID: Type.Optional(Type.String({ minLength: 1 })),
  S3_SECRET_ACCESS_KEY: Type.Optional(Type.String({ minLength: 1 })),
  S3_FORCE_PATH_STYLE: Type.Optional(Type.Boolean()),
  S3_PREFIX: Type.String({ default: '' }),
  VIDEO_RETENTION_DAYS: Type.Integer({ minimum: 0, default: 0 }),
  // Finished tasks (events, deliveries, attempts) are removed this long after they ended; 0 = kept for ever.
  TASK_RETENTION_DAYS: Type.Integer({ minimum: 0, maximum: 36_500, default: 30 }),
  MIRROR_MAX_BYTES: Type.Integer({ minimum: 1, default: 256 * 1024 * 1024 }),
  MIRROR_TIMEOUT_MS: Type.Integer({ minimum: 100, default: 300_000 }),
  MIRROR_ALLOW_PRIVATE: Type.Boolean({ default: false }),
  // The copy is retried until the upstream URL expires; the cap keeps one attempt inside the last 15 minutes.
  MIRROR_RETRY_BASE_MS: Type.Integer({ minimum: 1, maximum: 600_000, default: 2000 }),
  MIRROR_RETRY_MAX_MS: Type.Integer({ minimum: 1, maximum: 900_000, default: 600_000 }),
  MIRROR_SWEEP_INTERVAL_MS: Type.Integer({ minimum: 10, maximum: 3_600_000, default: 60_000 }),
  PARKED_MAX_BYTES: Type.Integer({ minimum: 0, default: 512 * 1024 * 1024 }),
  CREATE_MAX_LARGE_BODIES: Type.Integer({ minimum: 1, maximum: 1000, default: 8 }),
  LARGE_BODY_BYTES: Type.Integer({ minimum: 1024, default: 1024 * 1024 }),
  // A create body must be in within this (60 MiB at 512 KiB/s fits), and arrive at least this fast per 5 s window.
  CREATE_BODY_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 120_000 }),
  CREATE_BODY_MIN_BYTES_PER_S: Type.Integer({ minimum: 0, maximum: 1_000_000_000, default: 64 * 1024 }),
  // Per-caller limits (src/config/callers.ts): global defaults, 0 = no limit; CALLER_LIMITS overrides per caller.
  CALLER_CREATES_PER_MINUTE: Type.Integer({ minimum: 0, maximum: 1_000_000, default: 120 }),
  CALLER_MAX_ACTIVE_TASKS: Type.Integer({ minimum: 0, maximum: 1_000_000, default: 500 }),
  CALLER_MAX_LARGE_BODIES: Type.Integer({ minimum: 0, maximum: 1000, default: 1 }),
  CALLER_MAX_SSE_STREAMS: Type.Integer({ minimum: 0, maximum: 1_000_000, default: 100 }),
  CALLER_MAX_WEBHOOK_ENDPOINTS: Type.Integer({ minimum: 0, maximum: 10_000, default: 20 }),
  CALLER_DAILY_UNITS: Type.Integer({ minimum: 0, maximum: 1_000_000_000, default: 0 }),
  CALLER_LIMITS: Type.Optional(Type.String({ minLength: 2 })),
  // JSON: upstream units per task by "mode:duration" (the daily budgets' currency), over the defaults.
  UPSTREAM_UNITS: Type.Optional(Type.String({ minLength: 2 }))
})
type Env = Static<typeof EnvSchema>

/**
 * A caller's API key, kept only as its SHA-256 so the plain key never sits in memory longer than parsing. An admin
 * reads every caller's resources; an operator is an admin that may also change them (docs/API.md, "Auth and roles").
 */
export interface ApiKey { caller: string, sha256: Buffer, admin: boolean, operator: boolean }

type Role = 'caller' | 'admin' | 'operator'

/**
 * Caller names the gateway keeps for itself, or that read as one of its ids in a log line or a listing: `all` and
 * `task-url` name delivery indexes, and endpoints, deliveries, events and secrets have these prefixes.
 */
const RESERVED_CALLERS = /^(?:all|task-url|(?:ep|dlv|evt|msg|whsec)_.*)$/i

export interface RedisConfig {
  url?: string
  clusterNodes?: Array<{ host: string, port: number }>
  sentinels?: Array<{ host: string, port: number }>
  sentinelName?: string
  /** For Cluster and Sentinel nodes, and over a REDIS_URL without credentials of its own. */
  username?: string
  password?: string
  tls: boolean
  sentinelPassword?: string
  /**
   * The durability rule: replicas that must hold a write before a 202 or an upstream create (WAIT). `auto`
   * (the default with Sentinel) is every replica the master has when the gateway starts.
   */
  minReplicasAcked: number | 'auto'
  ackTimeoutMs: number
}

/** The checked, parsed configuration every part receives. */
export interface Config {
  port: number
  host: string
  redis: RedisConfig
  prefix: string
  upstream: {
    /** UPSTREAM: which adapter (src/upstream/factory.ts); each reads only its own section below. */
    name: UpstreamName
    cometapi: { baseUrl: string, key?: string }
    kling: { baseUrl: string, accessKey?: string, secretKey?: string }
    /** SIMULATOR_*: the in-process simulator (src/upstream/simulator.ts); `port` unset: 4010, else a free one. */
    simulator: { port?: number, processingAfterMs: number, finishAfterMs: number, failRatio: number }
    concurrency: number
    timeoutMs: number
    retryBaseMs: number
    submitAttempts: number
    unconfirmedGraceMs: number
    /** UPSTREAM_PAUSE_CHECK_MS (src/jobs/pause.ts). */
    pauseCheckMs: number
  }
  publicBaseUrl?: string
  /** CALLBACK_ALLOW_INSECURE: PUBLIC_BASE_URL may be http or private with a real upstream (on-prem, tests). */
  callbackAllowInsecure: boolean
  callbackSecret?: string
  /** CALLBACK_SECRETS_PREVIOUS: verify-only callback secrets (src/domain/callback-token.ts). */
  callbackSecretsPrevious: string[]
  apiKeys: ApiKey[]
  allowedModels: string[]
  /** MODEL_CAPABILITIES over the defaults: the models of each kind, their modes, durations and features. */
  models: ModelTable
  reconcile: { intervalMs: number, afterMs: number, deadlineMs: number, batch: number, qps: number }
  webhooks: { retryScheduleMs: number[], timeoutMs: number, allowPrivate: boolean, allowedPorts: number[] }
  /** CORS_ORIGINS: none = CORS off. */
  corsOrigins: string[]
  /** LINK_SECRET (else derived from callbackSecret) and LINK_TTL_S: signed links (src/services/links.ts). */
  links: { secret?: string, ttlS: number }
  logLevel: Env['LOG_LEVEL']
  dataDir: string
  createBodyLimit: number
  shutdownGraceMs: number
  /** After SIGTERM, how long readiness says 503 while everything else is still served, before the close. */
  shutdownDrainMs: number
  sseHeartbeatMs: number
  blobs: { driver: 'dir', dir: string } | {
    driver: 's3'
    bucket: string
    endpoint?: string
    region: string
    accessKeyId?: string
    secretAccessKey?: string
    forcePathStyle: boolean
    prefix: string
  }
  /** The result copy (MIRROR_* and VIDEO_RETENTION_DAYS). */
  copy: {
    maxBytes: number
    timeoutMs: number
    allowPrivate: boolean
    retentionMs: number
    /** Retries until the upstream URL expires: from `retryBaseMs`, doubling, at most `retryMaxMs` apart. */
    retryBaseMs: number
    retryMaxMs: number
    /** How often one replica re-queues succeeded tasks whose result is not stored yet. */
    sweepIntervalMs: number
  }
  /** How long a finished task is kept after it ended (TASK_RETENTION_DAYS); 0 = for ever. */
  taskRetentionMs: number
  parkedMaxBytes: number
  create: {
    maxLargeBodies: number
    largeBodyBytes: number
    /** CREATE_BODY_TIMEOUT_MS and CREATE_BODY_MIN_BYTES_PER_S (src/plugins/body-deadline.ts). */
    bodyTimeoutMs: number
    minBytesPerS: number
  }
  /** Per-caller limits, weights and budgets, and the units table: read through limitsFor() and unitsOf(). */
  callers: CallersConfig
}

/** Thrown by loadConfig; its message names every bad variable, and never a value. */
export class ConfigError extends Error {
  constructor (readonly problems: string[]) {
    super(`invalid environment:\n  ${problems.join('\n  ')}`)
    this.name = 'ConfigError'
  }
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** Parses `0,5s,5m,2h` into milliseconds. */
export function parseDurations (list: string): number[] {
  return list.split(',').map(item => {
    const [, n, unit] = /^(\d+)(ms|s|m|h)?$/.exec(item.trim()) ?? []
    return Number(n) * UNIT_MS[unit ?? 'ms']
  })
}

function parseHostPorts (list: string): Array<{ host: string, port: number }> {
  return list.split(',').map(hp => {
    const i = hp.lastIndexOf(':')
    return { host: hp.slice(0, i), port: Number(hp.slice(i + 1)) }
  })
}

/** `caller:key` or `caller:sha256:<hex>` entries; problems are reported by variable name only. */
function parseKeys (name: string, list: string | undefined, role: Role, problems: string[]): ApiKey[] {
  if (list === undefined) return []
  const keys: ApiKey[] = []
  for (const [i, entry] of list.split(',').entries()) {
    const m = /^([A-Za-z0-9_.-]{1,64}):(?:sha256:([0-9a-fA-F]{64})|(.{16,}))$/.exec(entry.trim())
    if (m === null) {
      problems.push(`${name}: entry ${i + 1} must be caller:key (key ≥ 16 characters) or caller:sha256:<64 hex>`)
      continue
    }
    if (RESERVED_CALLERS.test(m[1])) {
      problems.push(`${name}: entry ${i + 1}: the caller name is reserved (all, task-url, or one starting with an id ` +
        'prefix: ep_, dlv_, evt_, msg_, whsec_); choose another')
      continue
    }
    const sha256 = m[2] !== undefined ? Buffer.from(m[2], 'hex') : createHash('sha256').update(m[3]).digest()
    keys.push({ caller: m[1], sha256, admin: role !== 'caller', operator: role === 'operator' })
  }
  return keys
}

/** One key in two entries would have two roles (or two names), and which one won would depend on list order. */
function duplicateKeyProblems (keys: ApiKey[]): string[] {
  const seen = new Set<string>()
  for (const key of keys) {
    const hex = key.sha256.toString('hex')
    if (seen.has(hex)) {
      return ['API_KEYS: the same key is listed twice (across API_KEYS, ADMIN_API_KEYS and OPERATOR_API_KEYS)']
    }
    seen.add(hex)
  }
  return []
}

/**
 * The upstream UPSTREAM names, or the one the keys imply: COMETAPI_KEY → cometapi (as before UPSTREAM existed), the
 * Kling keys → kling, nothing → the simulator. Each missing variable the choice needs is named, never a value.
 */
function upstreamOf (value: Env, problems: string[]): UpstreamName {
  const kling = value.KLING_ACCESS_KEY !== undefined || value.KLING_SECRET_KEY !== undefined
  let name: UpstreamName | undefined = value.UPSTREAM
  // Not a name the schema knows: that is reported already, and nothing else can be said about it.
  if (name !== undefined && !(UPSTREAM_NAMES as readonly string[]).includes(name)) return 'simulator'
  if (name === undefined) {
    // Both sets of keys and no choice: guessing would send paid requests to the wrong vendor.
    if (value.COMETAPI_KEY !== undefined && kling) {
      problems.push('UPSTREAM: required (cometapi or kling) when COMETAPI_KEY and the KLING_* keys are both set')
    }
    name = value.COMETAPI_KEY !== undefined ? 'cometapi' : kling ? 'kling' : 'simulator'
  }
  if (name === 'cometapi' && value.COMETAPI_KEY === undefined) {
    problems.push('COMETAPI_KEY: required with UPSTREAM=cometapi')
  }
  if (name === 'kling') {
    if (value.KLING_ACCESS_KEY === undefined) problems.push('KLING_ACCESS_KEY: required with UPSTREAM=kling')
    if (value.KLING_SECRET_KEY === undefined) problems.push('KLING_SECRET_KEY: required with UPSTREAM=kling')
  }
  return name
}

/**
 * A real upstream calls back from the internet to PUBLIC_BASE_URL, so it must be set (no default can be reached from
 * there), https, and not a loopback, private or link-local host, by literal IP or internal name (as for webhooks,
 * docs/API.md, "SSRF"). CALLBACK_ALLOW_INSECURE lifts all but the first, for on-prem upstreams and tests.
 */
function callbackBaseProblems (value: Env, upstream: UpstreamName): string[] {
  const raw = value.PUBLIC_BASE_URL
  const lift = ' (CALLBACK_ALLOW_INSECURE=true allows it, for on-prem upstreams and tests)'
  if (raw === undefined) return [`PUBLIC_BASE_URL: required with UPSTREAM=${upstream}: callback_url is built from it`]
  // A value the schema refused is named already.
  if (value.CALLBACK_ALLOW_INSECURE || !/^https?:\/\/[^/]+/.test(raw) || !URL.canParse(raw)) return []
  const url = new URL(raw)
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
  if (url.protocol !== 'https:') return [`PUBLIC_BASE_URL: must be https with UPSTREAM=${upstream}${lift}`]
  if (url.username !== '' || url.password !== '') return ['PUBLIC_BASE_URL: must not carry credentials']
  if (isIP(host) !== 0 && isForbiddenAddress(host)) {
    return [`PUBLIC_BASE_URL: is a loopback, private, link-local or reserved address, unreachable from upstream${lift}`]
  }
  if (isIP(host) === 0 && isInternalName(host)) {
    return [`PUBLIC_BASE_URL: is an internal name (localhost, *.local, *.internal), unreachable from upstream${lift}`]
  }
  return []
}

/** The base of `callback_url`: PUBLIC_BASE_URL; only the simulator may fall back to this process's loopback port. */
export function callbackBaseUrl (config: Pick<Config, 'publicBaseUrl' | 'port' | 'upstream'>): string {
  if (config.publicBaseUrl !== undefined) return config.publicBaseUrl
  // loadConfig refuses a real upstream without PUBLIC_BASE_URL; this is the last line, not the check.
  if (config.upstream.name !== 'simulator') throw new Error('PUBLIC_BASE_URL is required with a real upstream')
  return `http://127.0.0.1:${config.port}`
}

/**
 * Reads and checks the environment once. Pure: the same env gives the same config, and every bad
 * variable is named in one ConfigError. Development defaults that need randomness (a dev API key, a
 * callback secret) are filled in by server.ts, not here.
 */
export function loadConfig (env: Record<string, string | undefined> = process.env): Config {
  // An empty variable means "unset", as in most shells' `FOO= cmd`.
  const raw = Object.fromEntries(
    Object.entries(env).filter(([k, v]) => k in EnvSchema.properties && v !== undefined && v !== '')
  )
  const value = Value.Default(EnvSchema, Value.Convert(EnvSchema, raw)) as Env
  const problems = Value.Check(EnvSchema, value)
    ? []
    : Value.Errors(EnvSchema, value).map(e => `${e.instancePath.slice(1) || '(root)'}: ${e.message}`)

  const upstream = upstreamOf(value, problems)
  if (upstream !== 'simulator' && value.CALLBACK_SECRET === undefined) {
    problems.push(`CALLBACK_SECRET: required with UPSTREAM=${upstream} (32+ characters)`)
  }
  if (upstream !== 'simulator') problems.push(...callbackBaseProblems(value, upstream))
  if (value.REDIS_SENTINELS !== undefined && value.REDIS_SENTINEL_NAME === undefined) {
    problems.push('REDIS_SENTINEL_NAME: required with REDIS_SENTINELS')
  }
  const redisModes = [value.REDIS_URL, value.REDIS_CLUSTER_NODES, value.REDIS_SENTINELS].filter(v => v !== undefined)
  if (redisModes.length > 1) problems.push('REDIS_URL: set only one of REDIS_URL, REDIS_CLUSTER_NODES, REDIS_SENTINELS')
  const apiKeys = [
    ...parseKeys('API_KEYS', value.API_KEYS, 'caller', problems),
    ...parseKeys('ADMIN_API_KEYS', value.ADMIN_API_KEYS, 'admin', problems),
    ...parseKeys('OPERATOR_API_KEYS', value.OPERATOR_API_KEYS, 'operator', problems)
  ]
  problems.push(...duplicateKeyProblems(apiKeys))
  if (value.BLOB_DRIVER === 's3' && value.S3_BUCKET === undefined) {
    problems.push('S3_BUCKET: required when BLOB_DRIVER=s3')
  }
  const models = parseModelTable(value.MODEL_CAPABILITIES, problems)
  const overrides = parseCallerLimits(value.CALLER_LIMITS, problems)
  const units = parseUnits(value.UPSTREAM_UNITS, problems)
  if (problems.length > 0) throw new ConfigError(problems)

  return {
    port: value.PORT,
    host: value.HOST,
    redis: {
      url: value.REDIS_URL,
      clusterNodes: value.REDIS_CLUSTER_NODES === undefined ? undefined : parseHostPorts(value.REDIS_CLUSTER_NODES),
      sentinels: value.REDIS_SENTINELS === undefined ? undefined : parseHostPorts(value.REDIS_SENTINELS),
      sentinelName: value.REDIS_SENTINEL_NAME,
      username: value.REDIS_USERNAME,
      password: value.REDIS_PASSWORD,
      tls: value.REDIS_TLS,
      sentinelPassword: value.REDIS_SENTINEL_PASSWORD,
      // Sentinel means replicas: a write counts once all of them hold it, so no failover can roll it back.
      minReplicasAcked: value.REDIS_MIN_REPLICAS_ACKED ?? (value.REDIS_SENTINELS !== undefined ? 'auto' : 0),
      ackTimeoutMs: value.REDIS_ACK_TIMEOUT_MS
    },
    prefix: value.REDIS_PREFIX,
    upstream: {
      name: upstream,
      cometapi: { baseUrl: value.COMETAPI_BASE_URL.replace(/\/+$/, ''), key: value.COMETAPI_KEY },
      kling: {
        baseUrl: value.KLING_BASE_URL.replace(/\/+$/, ''),
        accessKey: value.KLING_ACCESS_KEY,
        secretKey: value.KLING_SECRET_KEY
      },
      simulator: {
        port: value.SIMULATOR_PORT,
        processingAfterMs: value.SIMULATOR_PROCESSING_AFTER_MS,
        finishAfterMs: value.SIMULATOR_FINISH_AFTER_MS,
        failRatio: value.SIMULATOR_FAIL_RATIO
      },
      concurrency: value.UPSTREAM_CONCURRENCY,
      timeoutMs: value.UPSTREAM_TIMEOUT_MS,
      retryBaseMs: value.UPSTREAM_RETRY_BASE_MS,
      submitAttempts: value.UPSTREAM_SUBMIT_ATTEMPTS,
      unconfirmedGraceMs: value.SUBMIT_UNCONFIRMED_GRACE_MS,
      pauseCheckMs: value.UPSTREAM_PAUSE_CHECK_MS
    },
    publicBaseUrl: value.PUBLIC_BASE_URL?.replace(/\/+$/, ''),
    callbackAllowInsecure: value.CALLBACK_ALLOW_INSECURE,
    callbackSecret: value.CALLBACK_SECRET,
    callbackSecretsPrevious: value.CALLBACK_SECRETS_PREVIOUS?.split(',') ?? [],
    apiKeys,
    allowedModels: value.ALLOWED_MODELS.split(','),
    models,
    reconcile: {
      intervalMs: value.RECONCILE_INTERVAL_MS,
      afterMs: value.RECONCILE_AFTER_MS,
      deadlineMs: value.TASK_DEADLINE_MS,
      batch: value.RECONCILE_BATCH,
      qps: value.RECONCILE_QPS
    },
    webhooks: {
      retryScheduleMs: parseDurations(value.WEBHOOK_RETRY_SCHEDULE),
      timeoutMs: value.WEBHOOK_TIMEOUT_MS,
      allowPrivate: value.WEBHOOK_ALLOW_PRIVATE,
      allowedPorts: value.WEBHOOK_ALLOWED_PORTS.split(',').map(Number)
    },
    corsOrigins: value.CORS_ORIGINS.split(',').map(o => o.trim()).filter(o => o !== ''),
    links: { secret: value.LINK_SECRET, ttlS: value.LINK_TTL_S },
    logLevel: value.LOG_LEVEL,
    dataDir: value.DATA_DIR,
    createBodyLimit: value.CREATE_BODY_LIMIT_BYTES,
    shutdownGraceMs: value.SHUTDOWN_GRACE_MS,
    shutdownDrainMs: value.SHUTDOWN_DRAIN_MS,
    sseHeartbeatMs: value.SSE_HEARTBEAT_MS,
    blobs: value.BLOB_DRIVER === 's3'
      ? {
          driver: 's3',
          bucket: value.S3_BUCKET as string,
          endpoint: value.S3_ENDPOINT,
          region: value.S3_REGION,
          accessKeyId: value.S3_ACCESS_KEY_ID,
          secretAccessKey: value.S3_SECRET_ACCESS_KEY,
          forcePathStyle: value.S3_FORCE_PATH_STYLE ?? value.S3_ENDPOINT !== undefined,
          prefix: value.S3_PREFIX
        }
      : { driver: 'dir', dir: value.BLOB_DIR ?? `${value.DATA_DIR}/blobs` },
    copy: {
      maxBytes: value.MIRROR_MAX_BYTES,
      timeoutMs: value.MIRROR_TIMEOUT_MS,
      allowPrivate: value.MIRROR_ALLOW_PRIVATE,
      retentionMs: value.VIDEO_RETENTION_DAYS * 24 * 3600_000,
      retryBaseMs: value.MIRROR_RETRY_BASE_MS,
      retryMaxMs: value.MIRROR_RETRY_MAX_MS,
      sweepIntervalMs: value.MIRROR_SWEEP_INTERVAL_MS
    },
    taskRetentionMs: value.TASK_RETENTION_DAYS * 24 * 3600_000,
    parkedMaxBytes: value.PARKED_MAX_BYTES,
    create: {
      maxLargeBodies: value.CREATE_MAX_LARGE_BODIES,
      largeBodyBytes: value.LARGE_BODY_BYTES,
      bodyTimeoutMs: value.CREATE_BODY_TIMEOUT_MS,
      minBytesPerS: value.CREATE_BODY_MIN_BYTES_PER_S
    },
    callers: {
      defaults: {
        createsPerMinute: value.CALLER_CREATES_PER_MINUTE,
        maxActiveTasks: value.CALLER_MAX_ACTIVE_TASKS,
        maxLargeBodies: value.CALLER_MAX_LARGE_BODIES,
        maxSseStreams: value.CALLER_MAX_SSE_STREAMS,
        maxWebhookEndpoints: value.CALLER_MAX_WEBHOOK_ENDPOINTS,
        dailyUnits: value.CALLER_DAILY_UNITS,
        weight: 1
      },
      overrides,
      units
    }
  }
}
