/**
 * The replicas that are alive, and which blob directory each serves content from. A replica writes its
 * registration under its own key with a TTL and renews it on a heartbeat, so one that dies without closing drops
 * out within the TTL; the `replicas` set only names them (an id whose key has expired is removed by the next
 * reader). With BLOB_DRIVER=dir a video exists only in the directory the mirror wrote it to, so every replica must
 * serve from one directory: a replica that finds a live peer with another directory id refuses to start, and one
 * that meets such a peer later says so on /health/ready (the peer may have started in the same instant).
 */
import { hostname } from 'node:os'
import type { Logger } from 'pino'
import type { RedisClient } from '../infra/redis.ts'
import type { Lifecycle } from '../lifecycle.ts'
import type { Keys } from './keys.ts'
import { FailureLog } from '../infra/redis-log.ts'

export interface Registration {
  id: string
  host: string
  pid: number
  started_at: number
  /** The blob directory's identity file content (BLOB_DRIVER=dir), or null (s3). */
  blob_dir_id: string | null
}

export const HEARTBEAT_MS = 5000
/** Three missed heartbeats: a replica paused for a GC or a slow Redis is not taken for dead. */
export const REGISTRATION_TTL_MS = 15_000

const FIX = 'Use BLOB_DRIVER=s3, or mount one shared BLOB_DIR on every replica.'

function conflictMessage (peers: Registration[], mine: string): string {
  const who = peers.map(p => `${p.id} on ${p.host} (directory id ${String(p.blob_dir_id)})`).join(', ')
  return `BLOB_DRIVER=dir, but live replica ${who} serves content from another BLOB_DIR than this one ` +
    `(directory id ${mine}): each replica could serve only the videos it downloaded itself. ${FIX}`
}

/** Thrown by `start()`: another live replica serves from another blob directory. */
export class BlobDirConflict extends Error {
  constructor (readonly peers: Registration[], mine: string) {
    super(conflictMessage(peers, mine))
    this.name = 'BlobDirConflict'
  }
}

export interface ReplicaRegistryOptions {
  redis: RedisClient
  k: Keys
  id: string
  logger: Logger
  lifecycle: Lifecycle
  clock: () => number
}

export class ReplicaRegistry {
  readonly id: string
  private registration: Registration | null = null
  private timer: NodeJS.Timeout | undefined
  private beating: Promise<void> | null = null
  private closed = false
  /** Heartbeat failures are logged once per outage (Redis away), not on every beat. */
  private failures?: FailureLog
  /** The conflicting peers last reported, so the error is logged once per change, not on every heartbeat. */
  private reported = ''
  /** The fault this registry put on the lifecycle, so it clears only its own. */
  private fault: string | null = null

  constructor (private readonly opts: ReplicaRegistryOptions) {
    this.id = opts.id
  }

  /**
   * Refuses (BlobDirConflict) when a live peer serves from another directory; otherwise registers and starts the
   * heartbeat. Checked again just after registering, for a peer that registered in the same instant.
   */
  async start (blobDirId: string | null): Promise<void> {
    this.registration = {
      id: this.id, host: hostname(), pid: process.pid, started_at: this.opts.clock(), blob_dir_id: blobDirId
    }
    let conflicts = this.conflicts(await this.peers())
    if (conflicts.length === 0) {
      await this.publish()
      conflicts = this.conflicts(await this.peers())
    }
    if (conflicts.length > 0) {
      await this.unpublish()
      throw new BlobDirConflict(conflicts, String(blobDirId))
    }
    this.timer = setInterval(() => { this.beat().catch(() => {}) }, HEARTBEAT_MS)
    // The heartbeat alone must never keep the process alive.
    this.timer.unref()
  }

  /** Every live replica but this one. */
  async peers (): Promise<Registration[]> {
    const { redis, k } = this.opts
    const ids = (await redis.smembers(k.replicas)).filter(id => id !== this.id)
    if (ids.length === 0) return []
    const values = await redis.mget(...ids.map(k.replica))
    const gone = ids.filter((_, i) => values[i] === null)
    if (gone.length > 0) await redis.srem(k.replicas, ...gone)
    return values.filter((v): v is string => v !== null).map(v => JSON.parse(v) as Registration)
  }

  /** Renews the registration and looks at the peers again; what the interval runs (tests call it directly). */
  async beat (): Promise<void> {
    if (this.closed || this.registration === null) return
    // One at a time: with a slow Redis, beats must not pile up.
    this.beating ??= (async () => {
      try {
        await this.publish()
        this.report(this.conflicts(await this.peers()))
        this.failures?.ok()
      } catch (err) {
        this.failures ??= new FailureLog(this.opts.logger, 'replica heartbeat failed')
        this.failures.fail(err)
      } finally {
        this.beating = null
      }
    })()
    await this.beating
  }

  /** Stops the heartbeat and removes the registration, so a replacement is not compared with a replica gone. */
  async close (): Promise<void> {
    this.closed = true
    clearInterval(this.timer)
    await this.beating
    if (this.registration !== null) {
      await this.unpublish().catch((err: Error) => {
        this.opts.logger.warn({ err: err.message }, 'replica unregister failed')
      })
    }
  }

  private conflicts (peers: Registration[]): Registration[] {
    const mine = this.registration?.blob_dir_id ?? null
    // Only two directory replicas can disagree: S3 replicas share their bucket by construction.
    if (mine === null) return []
    return peers.filter(p => p.blob_dir_id !== null && p.blob_dir_id !== mine)
  }

  private report (conflicts: Registration[]): void {
    const { lifecycle, logger } = this.opts
    const key = conflicts.map(p => p.id).sort().join(',')
    if (key === this.reported) return
    this.reported = key
    if (conflicts.length > 0) {
      this.fault = conflictMessage(conflicts, String(this.registration?.blob_dir_id))
      lifecycle.fault = this.fault
      logger.error({ peers: conflicts.map(p => ({ id: p.id, host: p.host })) }, this.fault)
    } else {
      if (lifecycle.fault === this.fault) lifecycle.fault = null
      this.fault = null
      logger.info('no replica serves from another blob directory any more')
    }
  }

  private async publish (): Promise<void> {
    const { redis, k } = this.opts
    await redis.multi()
      .set(k.replica(this.id), JSON.stringify(this.registration), 'PX', REGISTRATION_TTL_MS)
      .sadd(k.replicas, this.id)
      .exec()
  }

  private async unpublish (): Promise<void> {
    const { redis, k } = this.opts
    await redis.multi().del(k.replica(this.id)).srem(k.replicas, this.id).exec()
  }
}
