/**
 * Signed links (docs/API.md, "Browsers"): short-lived URLs for `GET /v1/videos/{id}/content` and `/events` that
 * a browser can use where it cannot send an Authorization header (`<video src>`, `EventSource`).
 *
 * `?sig=<caller>.<expires>.<mac>`: `expires` in Unix seconds, `mac` the base64url HMAC-SHA256 of method, path,
 * expiry and caller under the link key. The path names the task and the route, so a link opens that one task's
 * content or events only, as the caller that asked for it (whose key must still exist), until it expires. Nothing
 * is stored: any replica with the same key checks any link. The key is LINK_SECRET, else derived from
 * CALLBACK_SECRET, so a link cannot be made into a callback token or the other way round.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'
import { callbackBaseUrl, type Config } from '../config/index.ts'
import { GatewayError } from '../domain/errors.ts'
import type { Caller } from '../plugins/auth.ts'

export type LinkTarget = 'content' | 'events'

function linkKey (config: Pick<Config, 'links' | 'callbackSecret'>): string | Buffer {
  if (config.links.secret !== undefined) return config.links.secret
  if (config.callbackSecret === undefined) throw new Error('signed links need LINK_SECRET or CALLBACK_SECRET')
  return createHmac('sha256', config.callbackSecret).update('kling-gateway signed links v1').digest()
}

function mac (key: string | Buffer, target: LinkTarget, taskId: string, expires: number, caller: string): Buffer {
  return createHmac('sha256', key).update(`GET\n/v1/videos/${taskId}/${target}\n${expires}\n${caller}`).digest()
}

/** The two links of a task for `caller`, valid LINK_TTL_S from `now` (ms). */
export function makeLinks (config: Config, caller: string, taskId: string, now: number) {
  const key = linkKey(config)
  const expires = Math.floor(now / 1000) + config.links.ttlS
  const url = (target: LinkTarget) => {
    const sig = `${caller}.${expires}.${mac(key, target, taskId, expires, caller).toString('base64url')}`
    return `${callbackBaseUrl(config)}/v1/videos/${encodeURIComponent(taskId)}/${target}?sig=${sig}`
  }
  return { content_url: url('content'), events_url: url('events'), expires_at: new Date(expires * 1000).toISOString() }
}

const refused = (why: string) => new GatewayError('UNAUTHORIZED', 401, why, undefined, { 'www-authenticate': 'Bearer' })

/**
 * The caller a `sig` acts as, for `target` of task `taskId`; throws 401 when it is malformed, for another task or
 * route, tampered with, expired, or its caller has no key any more. The MAC is compared in constant time.
 */
export function verifyLink (
  config: Config, sig: string, target: LinkTarget, taskId: string, now: number
): Caller {
  // Caller names may hold dots; the expiry and the base64url MAC never do, so split from the right. Only the MAC's
  // own spelling: its last character carries 2 unused bits, and a twin spelling would decode to the same MAC.
  const m = /^(.{1,64})\.(\d{1,12})\.([A-Za-z0-9_-]{42}[AEIMQUYcgkosw048])$/.exec(sig)
  if (m === null) throw refused('the signed link is not valid')
  const [, name, expiresText, given] = m
  const expires = Number(expiresText)
  const want = mac(linkKey(config), target, taskId, expires, name)
  if (!timingSafeEqual(want, Buffer.from(given, 'base64url'))) {
    throw refused('the signed link is not valid for this URL')
  }
  if (expires * 1000 <= now) {
    throw refused('the signed link has expired; ask for a new one (POST /v1/videos/{id}/links)')
  }
  const key = config.apiKeys.find(k => k.caller === name)
  if (key === undefined) throw refused('the signed link is not valid')
  return { name, admin: key.admin, operator: key.operator }
}
