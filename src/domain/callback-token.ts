import { createHmac, timingSafeEqual } from 'node:crypto'

/**
 * The token in our `callback_url`: `<task id>.<base64url HMAC-SHA256(task id)>` (256 bits). It names one task and
 * only the holder of CALLBACK_SECRET can make one. CometAPI's callbacks carry no signature we could check
 * (docs/DESIGN.md, "Upstream: CometAPI's Kling route"), so this token is what authenticates them.
 */
export function callbackToken (secret: string, taskId: string): string {
  return `${taskId}.${createHmac('sha256', secret).update(taskId).digest('base64url')}`
}

/** The task id a token names, or null; compares fixed-length digests in constant time. */
export function verifyCallbackToken (secret: string, token: string): string | null {
  const dot = token.lastIndexOf('.')
  if (dot <= 0 || token.length > 200) return null
  const taskId = token.slice(0, dot)
  const expected = createHmac('sha256', secret).update(taskId).digest()
  const given = Buffer.from(token.slice(dot + 1), 'base64url')
  if (given.length !== expected.length) return null
  return timingSafeEqual(given, expected) ? taskId : null
}
