/**
 * The queue/worker/close pattern every job family shares (submit, reconcile, deliver, copy): one BullMQ queue
 * under the store's hash-tagged prefix, an optional worker on this replica, error listeners that log instead
 * of crashing, and a shutdown that never hangs (`closeBounded`). Without a connection (OpenAPI generation)
 * there is no queue at all, and using one is a programming error.
 */
import { Queue, Worker, type ConnectionOptions, type Job, type WorkerOptions } from 'bullmq'
import type { Logger } from 'pino'
import type { RedisClient } from '../infra/redis.ts'
import { closeBounded } from './close.ts'
import { connectionWarner } from '../infra/redis-log.ts'

export interface QueueDeps {
  /** A connection BullMQ may block on (maxRetriesPerRequest: null); none = no queue. */
  connection?: RedisClient
  /** The store's queue prefix: the same hash tag as every task key (one Cluster slot). */
  prefix: string
  logger: Logger
}

export type Processor<Data> = (job: Job<Data>, token?: string) => Promise<string>

export abstract class QueueJobs<Data> {
  protected readonly log: Logger
  protected worker?: Worker<Data>
  private readonly q?: Queue<Data>
  // BullMQ types its connection against its own copy of ioredis; ours is the same library at run time.
  private readonly connection?: ConnectionOptions

  constructor (readonly name: string, private readonly base: QueueDeps) {
    this.log = base.logger.child({ component: name })
    if (base.connection === undefined) return
    this.connection = base.connection as unknown as ConnectionOptions
    this.q = new Queue<Data>(name, { connection: this.connection, prefix: base.prefix })
    // BullMQ's queues and workers emit no 'ready' of their own: their connection's says they are back.
    this.q.on('error', connectionWarner(this.log, `${name} queue`, base.connection))
  }

  get queue (): Queue<Data> {
    if (this.q === undefined) throw new Error(`${this.name}: no queue connection was given`)
    return this.q
  }

  /** Starts this replica's worker for the queue. */
  protected startWorker (process: Processor<Data>, opts: Omit<WorkerOptions, 'connection' | 'prefix'> = {}): void {
    if (this.connection === undefined) throw new Error(`${this.name}: no queue connection was given`)
    this.worker = new Worker<Data>(this.name, process, {
      ...opts, connection: this.connection, prefix: this.base.prefix
    })
    this.worker.on('error', connectionWarner(this.log, `${this.name} worker`, this.base.connection))
  }

  /**
   * Lets active jobs finish for up to `graceMs`, then forces the worker closed (a blocking read can hang after a
   * Redis reconnect). A job cut short is stalled and taken up again by any replica; every job is safe to rerun.
   */
  async close (graceMs = 5000): Promise<void> {
    await closeBounded(this.worker, this.q, this.log, graceMs)
    await this.closed()
  }

  /** What a family holds beside its queue (an HTTP agent), released after the worker has stopped. */
  protected async closed (): Promise<void> {}
}
