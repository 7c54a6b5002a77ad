/**
 * The audit trail (docs/API.md, "Audit log"): one structured log line per change a key makes, so that "who
 * canceled this task", "who rotated that secret" has an answer. Every line has `audit: true`, the `action`, the
 * acting `caller` and its `role`, the resource id(s) and the `outcome` (`ok`/`accepted`, or the error code that
 * refused it). Fields are named one by one by the call sites, never spread from a request or a record, so a secret
 * (an endpoint's `whsec_…`, a key) has no way in.
 */
import type { FastifyBaseLogger } from 'fastify'
import { GatewayError } from '../domain/errors.ts'
import { canSee, mayChange, type Caller } from './auth.ts'

export type AuditAction =
  | 'task.create' | 'task.cancel' | 'task.resolve'
  | 'endpoint.create' | 'endpoint.delete' | 'endpoint.rotate_secret' | 'endpoint.recover'
  | 'delivery.retry'

/** Ids and small facts of the resource (never a secret): `task_id`, `endpoint_id`, `delivery_id`, `owner`, … */
export type AuditFields = Record<string, string | number | boolean | null>

const roleOf = (caller: Caller): string => caller.operator ? 'operator' : caller.admin ? 'admin' : 'caller'

/** Writes one audit line. Info level: the trail is wanted in production, where warnings are for trouble. */
export function audit (log: FastifyBaseLogger, action: AuditAction, caller: Caller, outcome: string,
  fields: AuditFields): void {
  log.info({ audit: true, action, caller: caller.name, role: roleOf(caller), ...fields, outcome },
    `audit: ${action} ${outcome}`)
}

/**
 * Runs a change and audits it whatever happens: `ok` (or `success`) when it returns, the error's code when it
 * throws (a refusal is worth a line too: an admin trying to cancel another caller's task). `note` adds fields learnt
 * on the way (the owner once the resource is read, a count).
 */
export async function audited <T> (
  log: FastifyBaseLogger, action: AuditAction, caller: Caller, fields: AuditFields,
  run: (note: (more: AuditFields) => void) => Promise<T>, success = 'ok'
): Promise<T> {
  const all: AuditFields = { ...fields }
  try {
    const result = await run(more => { Object.assign(all, more) })
    audit(log, action, caller, success, all)
    return result
  } catch (err) {
    audit(log, action, caller, err instanceof GatewayError ? err.code : 'error', all)
    throw err
  }
}

/**
 * `mayChange`, noting the owner first when the caller may see it, so that a refusal's line (an admin without the
 * operator scope) says whose resource it was asked to change; an unseen one is not described.
 */
export function changeable <T extends { caller: string }> (caller: Caller, owned: T | null, what: string,
  note: (more: AuditFields) => void): T {
  if (canSee(caller, owned)) note({ owner: owned.caller })
  return mayChange(caller, owned, what)
}
