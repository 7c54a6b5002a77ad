import type { RedisClient } from '../infra/redis.ts'
import type { TaskEvent } from '../domain/task.ts'

/** One stream entry as a consumer group hands it out: its stream id, and the event (null once trimmed away). */
export interface StreamEntry { entryId: string, event: TaskEvent | null }

type Raw = Array<[string, string[] | null]>

function decode (raw: Raw): StreamEntry[] {
  return raw.map(([entryId, fields]) => {
    const at = fields?.indexOf('data') ?? -1
    return { entryId, event: fields === null || at < 0 ? null : JSON.parse(fields[at + 1]) as TaskEvent }
  })
}

/**
 * Reading the `{prefix}:events` stream (the task scripts write it). A reader that must act once per event for
 * the whole deployment (webhook fan-out, result copy) is a consumer group of its own; a reader that every
 * replica needs (the SSE hub) tails the stream.
 */
export class EventStream {
  constructor (private readonly redis: RedisClient, readonly key: string) {}

  /** Makes the group if it is not there, starting at the end: every replica does this before it writes. */
  async ensureGroup (group: string): Promise<void> {
    await this.redis.xgroup('CREATE', this.key, group, '$', 'MKSTREAM').catch((err: Error) => {
      if (!err.message.includes('BUSYGROUP')) throw err
    })
  }

  /** Takes over entries another consumer (a dead replica) has held for longer than `idleMs`. */
  async claim (group: string, consumer: string, idleMs: number, count = 100): Promise<StreamEntry[]> {
    const res = await this.redis.xautoclaim(this.key, group, consumer, idleMs, '0-0', 'COUNT', count) as [string, Raw]
    return decode(res[1])
  }

  /**
   * New entries for this consumer (`from` '>'), waiting up to `blockMs` on `reader` (a connection that may block),
   * or (`from` '0') the entries it was handed and has not acknowledged, at once.
   */
  async read (reader: RedisClient, group: string, consumer: string, blockMs: number, from: '>' | '0' = '>',
    count = 100): Promise<StreamEntry[]> {
    const res = await reader.xreadgroup('GROUP', group, consumer, 'COUNT', count, 'BLOCK', blockMs,
      'STREAMS', this.key, from) as Array<[string, Raw]> | null
    return res === null ? [] : decode(res[0][1])
  }

  /** Entries after `afterId` ('$' = from now), waiting up to `blockMs` on `reader`; every replica sees every one. */
  async tail (reader: RedisClient, afterId: string, blockMs: number, count = 500): Promise<StreamEntry[]> {
    const res = await reader.xread('COUNT', count, 'BLOCK', blockMs, 'STREAMS', this.key, afterId) as
      Array<[string, Raw]> | null
    return res === null ? [] : decode(res[0][1])
  }

  /** The id of the newest entry, or '0-0' for an empty stream: where a tail reader starts. */
  async lastId (): Promise<string> {
    const last = await this.redis.xrevrange(this.key, '+', '-', 'COUNT', 1)
    return last[0]?.[0] ?? '0-0'
  }

  /** Acknowledges entries of `group`, any number in one XACK. */
  async ack (group: string, entryIds: string[]): Promise<void> {
    if (entryIds.length > 0) await this.redis.xack(this.key, group, ...entryIds)
  }
}
