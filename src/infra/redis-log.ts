import type { Logger } from 'pino'

interface Ready { on: (event: 'ready', listener: () => void) => unknown }
interface Connection {
  on: ((event: 'ready', listener: () => void) => unknown) &
    ((event: 'error', listener: (err: Error) => void) => unknown)
}

/**
 * An 'error' listener that warns once per outage: one warning when the connection goes down, one line when `upFrom`
 * says it is ready again. ioredis emits an error on every reconnect attempt, which made ~300 identical warnings
 * while a Redis was gone; readiness (503) is what says it is still down.
 */
export function connectionWarner (logger: Logger, what: string, upFrom?: Ready): (err: Error) => void {
  let down = false
  upFrom?.on('ready', () => {
    if (!down) return
    down = false
    logger.info(`${what}: connection back`)
  })
  return (err: Error) => {
    if (down) return
    down = true
    logger.warn({ err: err.message }, `${what}: connection lost; retrying (no more warnings until it is back)`)
  }
}

/** The same on an ioredis client, which says itself when it is ready. */
export function logConnectionState (client: Connection, logger: Logger, what: string): void {
  client.on('error', connectionWarner(logger, what, client))
}

/**
 * The same for a periodic task that fails while Redis is away (a heartbeat, a dispatch): a warning when it starts
 * failing, one line when it works again, and nothing for each failure in between.
 */
export class FailureLog {
  private failing = false
  constructor (private readonly logger: Logger, private readonly what: string) {}

  fail (err: unknown, fields: Record<string, unknown> = {}): void {
    if (this.failing) return
    this.failing = true
    this.logger.warn({ ...fields, err: (err as Error).message }, `${this.what} (no more warnings until it works again)`)
  }

  ok (): void {
    if (!this.failing) return
    this.failing = false
    this.logger.info(`${this.what}: works again`)
  }
}
