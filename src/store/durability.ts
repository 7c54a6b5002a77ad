import type { RedisClient } from '../infra/redis.ts'
import { Unavailable } from '../domain/errors.ts'

export interface DurabilityRule {
  /** Replicas that must hold a write before it counts (REDIS_MIN_REPLICAS_ACKED); 0 = the node's own fsync rule. */
  replicas: number
  /** How long to wait for them (REDIS_ACK_TIMEOUT_MS). */
  timeoutMs: number
}

/**
 * "Durable before 202 and before paying": `ensure()` resolves once every write this process completed before
 * the call is held by `replicas` replicas, and throws a 503 otherwise.
 *
 * WAIT only counts the writes of the connection it runs on, so each round writes a fence key on a connection
 * of its own and WAITs there: the replication stream is ordered, so a replica that has the fence has every
 * write that completed before it, on any connection. Callers that arrive while a round is in flight join the
 * next round (one WAIT for many creates, like a group commit); they cannot join the one in flight, whose fence
 * may have been written before their own write. On Cluster the fence and the WAIT go in one pipeline, which
 * ioredis sends to the node of the fence's slot, the one that owns every key of ours.
 */
export class Durability {
  private inFlight?: Promise<void>
  private next?: Promise<void>

  constructor (
    private readonly connection: RedisClient | undefined,
    private readonly fenceKey: string,
    readonly rule: DurabilityRule
  ) {}

  get enabled (): boolean { return this.rule.replicas > 0 && this.connection !== undefined }

  async ensure (): Promise<void> {
    if (!this.enabled) return
    if (this.next !== undefined) return await this.next
    if (this.inFlight === undefined) return await this.start()
    const next = this.inFlight.catch(() => {}).then(async () => {
      this.next = undefined
      await this.start()
    })
    this.next = next
    return await next
  }

  private async start (): Promise<void> {
    const round = this.round().finally(() => { this.inFlight = undefined })
    this.inFlight = round
    await round
  }

  private async round (): Promise<void> {
    const conn = this.connection as RedisClient
    const { replicas, timeoutMs } = this.rule
    const results = await conn.pipeline().incr(this.fenceKey).wait(replicas, timeoutMs).exec()
    const failed = results?.find(([err]) => err !== null)?.[0]
    if (failed !== undefined && failed !== null) throw failed
    const acked = Number(results?.[1]?.[1] ?? 0)
    if (acked < replicas) {
      throw new Unavailable(`the write reached ${acked} of ${replicas} Redis replicas within ${timeoutMs} ms; ` +
        'retry after Retry-After (with the same Idempotency-Key it returns the same task)', 1)
    }
  }
}
