/**
 * A deadline and a minimum rate for reading a create body (docs/API.md, "Per-caller limits"; GitHub issue 13): a
 * client that sends a large body one byte at a time would otherwise hold its large-body slot, and the memory behind
 * it, for as long as it likes. Both are measured on the body stream itself, from the moment the headers are in.
 *
 * Why a timer of our own: Node's `requestTimeout` is one value for the whole server, checked only every
 * `connectionsCheckingInterval` (30 s), and knows nothing of rates; `connectionTimeout` is an idle timeout, which a
 * byte every few seconds never trips; Fastify's `handlerTimeout` covers the handler too (it would cut a create whose
 * body is in and whose task is being written) and has no rate either. So the route's `preParsing` hook hands the
 * parser a counting pass-through of the body and checks it once a second; Node's `requestTimeout` stays as the
 * server-wide backstop, never shorter than CREATE_BODY_TIMEOUT_MS (src/app.ts).
 */
import { Transform, type Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { GatewayError } from '../domain/errors.ts'

/** The rate is the bytes of the last window; the first window is the grace every upload gets. */
export const MIN_RATE_WINDOW_MS = 5000
const TICK_MS = 1000
const WINDOW_TICKS = MIN_RATE_WINDOW_MS / TICK_MS

export interface BodyRules {
  /** CREATE_BODY_TIMEOUT_MS: the whole body must be in by then. */
  timeoutMs: number
  /** CREATE_BODY_MIN_BYTES_PER_S over each MIN_RATE_WINDOW_MS, once the first has passed; `0` = no minimum. */
  minBytesPerS: number
}

/** 408 through the error handler; `Connection: close`, since the rest of the body is not read. */
class BodyTooSlow extends GatewayError {
  constructor (detail: string) {
    super('REQUEST_TIMEOUT', 408, detail, undefined, { connection: 'close' })
  }
}

/**
 * A `preParsing` hook enforcing `rules` on the body. `onCut` runs the moment a body is cut, before the 408 is
 * written, so whatever the request held (its large-body slot) is free at once, even if the client never reads.
 */
export function bodyDeadline (rules: BodyRules, onCut: (request: FastifyRequest) => void) {
  const need = Math.ceil(rules.minBytesPerS * MIN_RATE_WINDOW_MS / 1000)
  return async function preParsing (request: FastifyRequest, reply: FastifyReply, payload: Readable) {
    let received = 0
    // Bytes received at each of the last WINDOW_TICKS + 1 ticks, oldest first.
    const marks = [0]
    const watched = new Transform({
      transform (chunk: Buffer, _encoding, callback) {
        received += chunk.length
        callback(null, chunk)
      }
    })
    const cut = (detail: string) => {
      stop()
      request.log.info({ received, timeoutMs: rules.timeoutMs, minBytesPerS: rules.minBytesPerS }, 'create body cut')
      onCut(request)
      // The parser sees the error and answers it; the request stream is only unpiped (destroying it would destroy
      // the socket, and with it the 408).
      watched.destroy(new BodyTooSlow(detail))
    }
    const deadline = setTimeout(() => {
      cut(`the body did not arrive within ${rules.timeoutMs} ms (${received} bytes came); send it again, faster`)
    }, rules.timeoutMs)
    const ticker = need === 0
      ? undefined
      : setInterval(() => {
        marks.push(received)
        if (marks.length > WINDOW_TICKS + 1) marks.shift()
        if (marks.length === WINDOW_TICKS + 1 && received - marks[0] < need) {
          cut(`the body arrived slower than ${rules.minBytesPerS} bytes/s over ${MIN_RATE_WINDOW_MS} ms ` +
            `(${received - marks[0]} bytes came); send it again, faster`)
        }
      }, TICK_MS)
    function stop () {
      clearTimeout(deadline)
      clearInterval(ticker)
    }
    // `finish`: every byte of the body is in (the handler's own time is not limited here).
    watched.once('finish', stop)
    watched.once('close', stop)
    reply.raw.once('close', stop)
    // `pipe` does not forward errors: an aborted upload must still reach the parser as one.
    payload.once('error', (err: Error) => watched.destroy(err))
    payload.pipe(watched)
    return watched
  }
}
