import fp from 'fastify-plugin'
import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { ApiKey } from '../config/index.ts'
import { NotFound, OperatorScopeRequired, Unauthorized } from '../domain/errors.ts'

/** `admin`: reads every caller's resources; `operator` (always an admin too): may also change them. */
export interface Caller { name: string, admin: boolean, operator: boolean }

declare module 'fastify' {
  interface FastifyRequest { caller: Caller | null }
  interface FastifyInstance { authenticate: (request: FastifyRequest) => Promise<void> }
}

/**
 * Whether `caller` may see a thing owned by `owner.caller`: its own, or anything for an admin. Everything else
 * answers 404, never 403 (docs/API.md, "Auth and roles"), so callers cannot probe for others' ids.
 */
export function canSee <T extends { caller: string }> (caller: Caller, owned: T | null): owned is T {
  return owned !== null && (caller.admin || owned.caller === caller.name)
}

/**
 * The thing `caller` asks to change (cancel, resolve, delete, rotate, recover, retry): its own, or another caller's
 * for an operator. What it cannot see is 404 as ever; what an admin without the scope can see but not change is 403
 * OPERATOR_SCOPE_REQUIRED, since a 404 for a resource it has just read would be a lie.
 */
export function mayChange <T extends { caller: string }> (caller: Caller, owned: T | null, what: string): T {
  if (!canSee(caller, owned)) throw new NotFound(what)
  if (owned.caller !== caller.name && !caller.operator) throw new OperatorScopeRequired(what)
  return owned
}

/** Finds the key's owner comparing fixed-length SHA-256 digests in constant time, every key every time. */
export function findCaller (keys: ApiKey[], presented: string): Caller | null {
  const digest = createHash('sha256').update(presented).digest()
  let found: Caller | null = null
  for (const key of keys) {
    if (timingSafeEqual(digest, key.sha256) && found === null) {
      found = { name: key.caller, admin: key.admin, operator: key.operator }
    }
  }
  return found
}

/** Bearer API keys (docs/API.md, "Auth and roles"); routes opt in with `onRequest: app.authenticate`. */
export default fp(async function auth (app: FastifyInstance) {
  app.decorateRequest('caller', null)
  app.decorate('authenticate', async (request: FastifyRequest) => {
    const header = request.headers.authorization
    const m = header === undefined ? null : /^Bearer +(\S{1,512})$/i.exec(header)
    const caller = m === null ? null : findCaller(app.deps.config.apiKeys, m[1])
    if (caller === null) throw new Unauthorized()
    request.caller = caller
  })
}, { name: 'auth', dependencies: ['errors'] })
