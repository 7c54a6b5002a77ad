/** OpenAPI answers of the per-caller limits kept on each replica (src/services/caller-slots.ts). */
import { problem, problemExample } from './common.ts'

/** 429 `CALLER_LIMIT` naming `limit` (a CALLER_LIMITS field), with an example as the gateway answers it. */
export function callerLimited (description: string, limit: string, value: number, detail: string) {
  const p = problem(429, description, { code: 'CALLER_LIMIT', detail })
  const example = { ...problemExample(429, { code: 'CALLER_LIMIT', detail }), limit, limit_value: value }
  const media = p.content['application/problem+json']
  return { ...p, content: { 'application/problem+json': { ...media, example } } }
}

/** 408 of a create body that did not arrive in time (src/plugins/body-deadline.ts). */
export const bodyTooSlow = () => problem(408,
  'the body did not arrive within CREATE_BODY_TIMEOUT_MS, or slower than CREATE_BODY_MIN_BYTES_PER_S over a 5 s ' +
  'window (after the first 5 s); the connection is closed. Nothing was created: send it again', {
    code: 'REQUEST_TIMEOUT',
    detail: 'the body arrived slower than 65536 bytes/s over 5000 ms (12 bytes came); send it again, faster'
  })
