/** The 408 of a create body too slow (src/plugins/body-deadline.ts); the 429s are in ./limits.ts. */
import { problem } from './common.ts'

/** 408 of a create body that did not arrive in time (src/plugins/body-deadline.ts). */
export const bodyTooSlow = () => problem(408,
  'the body did not arrive within CREATE_BODY_TIMEOUT_MS, or slower than CREATE_BODY_MIN_BYTES_PER_S over a 5 s ' +
  'window (after the first 5 s); the connection is closed. Nothing was created: send it again', {
    code: 'REQUEST_TIMEOUT',
    detail: 'the body arrived slower than 65536 bytes/s over 5000 ms (12 bytes came); send it again, faster'
  })
