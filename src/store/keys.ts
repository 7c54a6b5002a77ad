import { createHash } from 'node:crypto'

/**
 * Every Redis key, built in one place. All share the hash tag `{prefix}`
 * so multi-key scripts run on Redis Cluster.
 */
export function keys (prefix: string) {
  const p = `{${prefix}}:`
  const digest = (s: string) => createHash('sha256').update(s).digest('hex')
  return {
    prefix: p,
    task: (id: string) => `${p}task:${id}`,
    taskEvents: (id: string) => `${p}task:${id}:events`,
    parked: (id: string) => `${p}task:${id}:parked`,
    /** Callbacks seen for a task in the current minute (rate limit). */
    /** The ids of a task's webhook deliveries (set), so retention can find them. */
    taskDeliveries: (id: string) => `${p}task:${id}:deliveries`,
    /** Terminal tasks scored by when they ended: task retention's work list. */
    ended: `${p}ended`,
    /** How far the walk of `idx:*:*` for terminal tasks `ended` lacks has got (a rank; it starts over). */
    endedBackfill: `${p}ended:backfill`,
    /** Tasks whose result videos are stored, scored by when (retention). */
    stored: `${p}stored`,
    /** Succeeded tasks whose result is neither stored nor given up, scored by when last queued (the copy sweep). */
    copying: `${p}copying`,
    /** How far the walk of the succeeded index for tasks `copying` lacks has got (a rank; it starts over). */
    copyingBackfill: `${p}copying:backfill`,
    /** Tasks newest first, per caller (`*` for all) and status (`*` for any). */
    index: (caller: string, status: string) => `${p}idx:${caller}:${status}`,
    reference: (caller: string, reference: string) => `${p}ref:${caller}:${digest(reference)}`,
    idempotency: (caller: string, key: string) => `${p}idem:${caller}:${digest(key)}`,
    /** The same record by the key's digest (what a task keeps, so retention can delete its record). */
    idempotencyDigest: (caller: string, keyDigest: string) => `${p}idem:${caller}:${keyDigest}`,
    digest,
    /** Non-terminal tasks scored by last activity, for reconciliation. */
    open: `${p}open`,
    /** The event stream: the outbox every reader (webhooks, copy, live/SSE, internal consumers) reads. */
    events: `${p}events`,
    parkedBytes: `${p}parked:bytes`,
    /** Parked images not yet owned by a stored task, scored by when they were parked (a sweep frees leftovers). */
    parkedPending: `${p}parked:pending`,
    /** A counter written just before WAIT, so one WAIT covers every write that completed before it. */
    fence: `${p}fence`,
    /** One live replica's registration (JSON), expiring unless its heartbeat renews it. */
    replica: (id: string) => `${p}replica:${id}`,
    /** The ids of registered replicas; an id whose registration expired is dropped by the next reader. */
    replicas: `${p}replicas`,
    /** A callback whose token verified but whose task is gone, by our task id (the upstream task it reported). */
    orphan: (taskId: string) => `${p}orphan:${taskId}`,
    /** Orphaned callbacks' task ids, scored by when one was last seen. */
    orphans: `${p}orphans`,
    /** A webhook endpoint (hash), and a caller's endpoints by creation time. */
    endpoint: (id: string) => `${p}ep:${id}`,
    endpoints: (caller: string) => `${p}eps:${caller}`,
    /** A delivery (hash) and its attempts (list). */
    delivery: (id: string) => `${p}dlv:${id}`,
    deliveryAttempts: (id: string) => `${p}dlv:${id}:attempts`,
    /**
     * Deliveries newest first, every caller's, one caller's, one endpoint's or those to tasks' own webhook_url;
     * by status (pending, retrying, failed, succeeded), each scored by when the delivery entered it. Callers and
     * endpoints have namespaces of their own, so that no caller name can read as an endpoint id or `task-url` (a
     * caller named `task-url` listed every task URL's deliveries).
     */
    deliveries: (scope: DeliveryScope, status: 'all' | DeliveryStatus = 'all') => `${p}dlvidx:${
      typeof scope === 'string' ? scope : 'caller' in scope ? `caller:${scope.caller}` : `ep:${scope.endpoint}`
    }:${status}`,
    /** The secret that signs deliveries to a caller's tasks' own webhook_url. */
    callerSecret: (caller: string) => `${p}whsec:${caller}`,
    /** Why the submit queue is paused for the whole upstream account (hash), absent while it runs. */
    pause: `${p}upstream:pause`,
    /** While paused: a trial one submit job may take (the half-open check of a balance or account problem). */
    pauseTrial: `${p}upstream:pause:trial`,
    /** The submit queue's fair share (src/jobs/fair.ts): waiting tasks, one line per caller (lexical order). */
    fairReady: `${p}fair:ready`,
    /** A waiting task's member in `fairReady`, by task id (a second submit is a no-op). */
    fairQueued: `${p}fair:queued`,
    /** Callers with tasks waiting → how many. */
    fairCallers: `${p}fair:callers`,
    /** Caller → how far its next start tag is ahead of the virtual time (bounded by the largest step). */
    fairLag: `${p}fair:lag`,
    /** Released tasks holding one of the UPSTREAM_CONCURRENCY slots → when the lease ends. */
    fairSlots: `${p}fair:slots`,
    /** A caller's create token bucket (creates_per_minute); absent while full. */
    createBucket: (caller: string) => `${p}limit:${caller}:creates`,
    /** A caller's usage of one UTC day (`YYYY-MM-DD`): tasks created and units charged; expires on its own. */
    usage: (caller: string, day: string) => `${p}usage:${caller}:${day}`,
    /** BullMQ prefix: queues live under the same hash tag. */
    bullPrefix: `{${prefix}}`
  }
}
export type Keys = ReturnType<typeof keys>
/** What a delivery index lists: `all` deliveries, one caller's, one endpoint's, or those to tasks' own URLs. */
export type DeliveryScope = 'all' | 'task-url' | { caller: string } | { endpoint: string }
/** A delivery's state (docs/API.md, `GET /v1/deliveries`). */
export type DeliveryStatus = 'pending' | 'retrying' | 'failed' | 'succeeded'
