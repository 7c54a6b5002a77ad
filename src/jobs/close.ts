import type { Queue, Worker } from 'bullmq'
import type { Logger } from 'pino'

/** Resolves true when `p` settles within `ms`, false otherwise (the promise is left to finish on its own). */
async function within (p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const done = await Promise.race([
    p.then(() => true, () => true),
    new Promise<false>(resolve => { timer = setTimeout(() => resolve(false), ms) })
  ])
  clearTimeout(timer)
  return done
}

/**
 * Closes a worker and its queue without ever hanging shutdown: active jobs get `graceMs` to finish, then the
 * worker is forced closed; a blocking read stuck after a Redis reconnect (ioredis #1888) is abandoned after a
 * bounded wait. A job cut short is stalled and taken up again by any replica, and every job here is safe to
 * run twice.
 */
export async function closeBounded (
  worker: Worker | undefined,
  queue: Queue | undefined,
  log: Logger,
  graceMs = 5000
): Promise<void> {
  if (worker !== undefined && !await within(worker.close(), graceMs)) {
    log.warn('worker did not close in time; forcing it')
    if (!await within(worker.close(true), 2000)) log.warn('worker did not close even when forced; leaving it')
  }
  if (queue !== undefined && !await within(queue.close(), 2000)) log.warn('queue did not close in time; leaving it')
}
