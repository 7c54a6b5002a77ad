import { createHmac, timingSafeEqual } from 'node:crypto'

/**
 * The token in our `callback_url` (docs/API.md, "The upstream callback"):
 *
 *   v2.<kid>.<exp>.<task id>.<mac>   mac = base64url, no padding, of HMAC-SHA256(secret, "v2.<kid>.<exp>.<task id>")
 *
 * `kid` names the secret that signed it (`callbackKeyId`), so CALLBACK_SECRET can be rotated with tasks in flight:
 * the old secret, listed in CALLBACK_SECRETS_PREVIOUS, still verifies (never signs) until its tokens expire. `exp`
 * (Unix seconds) ends the token: a leaked one stops working once its task cannot need it. CometAPI's callbacks
 * carry no signature we could check (docs/DESIGN.md, "Upstream: CometAPI's Kling route"), so this token is what
 * authenticates them. Tokens minted before key ids (`<task id>.<mac>`, "v1") still verify under any listed secret;
 * none are minted any more.
 */
export interface CallbackKeys {
  /** CALLBACK_SECRET: signs and verifies. */
  current: string
  /** CALLBACK_SECRETS_PREVIOUS: verify only. */
  previous: readonly string[]
}

const KID = /^[0-9a-f]{8}$/
const EXP = /^[1-9][0-9]{0,11}$/
const TASK_ID = /^[A-Za-z0-9_-]{1,100}$/
/** 32 bytes in base64url without padding: 42 characters of 6 bits and a last one whose low 2 bits are 0. */
const MAC = /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/

const keysOf = (keys: CallbackKeys | string): CallbackKeys =>
  typeof keys === 'string' ? { current: keys, previous: [] } : keys

const mac = (secret: string, signed: string): string =>
  createHmac('sha256', secret).update(signed).digest('base64url')

/** Key ids by secret: every callback looks its secret up by id, and there are only ever a few secrets. */
const keyIds = new Map<string, string>()

/** A secret's id: 8 hex of HMAC-SHA256(secret, "kid"); says nothing usable about the secret. */
export function callbackKeyId (secret: string): string {
  let kid = keyIds.get(secret)
  if (kid === undefined) {
    kid = createHmac('sha256', secret).update('kid').digest('hex').slice(0, 8)
    // Bounded for a process that is handed many secrets (tests): past a handful, it simply recomputes.
    if (keyIds.size < 16) keyIds.set(secret, kid)
  }
  return kid
}

/** The token for `taskId`, signed with the current secret, good until `expiresAt` (ms; rounded up to seconds). */
export function callbackToken (keys: CallbackKeys | string, taskId: string, expiresAt: number): string {
  const secret = keysOf(keys).current
  const signed = `v2.${callbackKeyId(secret)}.${Math.ceil(expiresAt / 1000)}.${taskId}`
  return `${signed}.${mac(secret, signed)}`
}

export type TokenCheck =
  | { ok: true, taskId: string }
  | { ok: false, reason: 'malformed' | 'unknown-key' | 'wrong' | 'expired' }

/**
 * Whether `token` is one we minted, and for which task. Only the exact spelling we mint is accepted (no padding,
 * no other alphabet, no extra characters); the MACs are compared as fixed-length strings in constant time. The
 * caller answers every failure the same way; `reason` is for its logs.
 */
export function checkCallbackToken (keys: CallbackKeys | string, token: string, now: number): TokenCheck {
  const { current, previous } = keysOf(keys)
  // CometAPI repeats a task's callback with the same token: one MAC per token is enough while its secret is held.
  const known = verified.get(token)
  if (known !== undefined && (known.secret === current || previous.includes(known.secret))) {
    return known.expiresAt <= now ? { ok: false, reason: 'expired' } : { ok: true, taskId: known.taskId }
  }
  const check = checkUncached(current, previous, token, now)
  if (check.ok) remember(token, check)
  return check.ok ? { ok: true, taskId: check.taskId } : check
}

/** Tokens whose MAC verified, with the secret that verified them (a secret dropped from the keys drops them). */
const verified = new Map<string, { taskId: string, expiresAt: number, secret: string }>()
const MAX_VERIFIED = 10_000

function remember (token: string, v: { taskId: string, expiresAt: number, secret: string }): void {
  // Bounded: when full it starts again; a token that falls out is simply verified again.
  if (verified.size >= MAX_VERIFIED) verified.clear()
  verified.set(token, v)
}

type Verified = { ok: true, taskId: string, expiresAt: number, secret: string }

function checkUncached (
  current: string, previous: readonly string[], token: string, now: number
): Verified | Exclude<TokenCheck, { ok: true }> {
  if (token.length > 256) return { ok: false, reason: 'malformed' }
  const dot = token.lastIndexOf('.')
  const signed = token.slice(0, dot)
  const given = token.slice(dot + 1)
  if (dot <= 0 || !MAC.test(given)) return { ok: false, reason: 'malformed' }
  const parts = signed.split('.')
  if (parts.length === 1) {
    // v1: `<task id>.<mac>` under any secret we still hold (they have no key id to pick one by).
    if (!TASK_ID.test(signed)) return { ok: false, reason: 'malformed' }
    const match = [current, ...previous].find(s => equal(mac(s, signed), given))
    return match !== undefined
      ? { ok: true, taskId: signed, expiresAt: Infinity, secret: match }
      : { ok: false, reason: 'wrong' }
  }
  const [version, kid, exp, taskId] = parts
  if (parts.length !== 4 || version !== 'v2' || !KID.test(kid) || !EXP.test(exp) || !TASK_ID.test(taskId)) {
    return { ok: false, reason: 'malformed' }
  }
  const secret = [current, ...previous].find(s => callbackKeyId(s) === kid)
  if (secret === undefined) return { ok: false, reason: 'unknown-key' }
  if (!equal(mac(secret, signed), given)) return { ok: false, reason: 'wrong' }
  // Checked after the MAC, so that "expired" is only ever said of a token we really minted.
  if (Number(exp) * 1000 <= now) return { ok: false, reason: 'expired' }
  return { ok: true, taskId, expiresAt: Number(exp) * 1000, secret }
}

/** The task id a token names, or null (see `checkCallbackToken`). */
export function verifyCallbackToken (keys: CallbackKeys | string, token: string, now = Date.now()): string | null {
  const check = checkCallbackToken(keys, token, now)
  return check.ok ? check.taskId : null
}

/** Constant time on two 43-character ASCII strings (both checked against MAC, or minted by us). */
function equal (expected: string, given: string): boolean {
  const a = Buffer.from(expected, 'latin1')
  const b = Buffer.from(given, 'latin1')
  return a.length === b.length && timingSafeEqual(a, b)
}

/** The keys a configuration holds (CALLBACK_SECRET, CALLBACK_SECRETS_PREVIOUS). */
export function callbackKeys (config: { callbackSecret?: string, callbackSecretsPrevious?: readonly string[] }):
CallbackKeys {
  return { current: config.callbackSecret ?? '', previous: config.callbackSecretsPrevious ?? [] }
}

/** A day past the longest a callback can matter: the deadline, then as long again watching for a late success. */
export const CALLBACK_TOKEN_MARGIN_MS = 24 * 3600_000

/** When a task's token expires: fixed by its creation, so every submit of the task sends the same callback_url. */
export function callbackTokenExpiry (createdAt: number, deadlineMs: number): number {
  return createdAt + 2 * deadlineMs + CALLBACK_TOKEN_MARGIN_MS
}
