/**
 * What this replica says about itself beyond "Redis answers": the one place `/health/ready` reads, and the one
 * place the process entry (drain on SIGTERM) and the replica registry (a blob directory no peer shares) write.
 * A plain object in the app deps, so tests can drive it through `buildApp` without signals.
 */
export interface Lifecycle {
  /** Set on SIGTERM/SIGINT: readiness answers 503 so load balancers move traffic away while we still serve it. */
  draining: boolean
  /** Why this replica must not take traffic although it runs (e.g. a peer with another blob directory), or null. */
  fault: string | null
}

export function newLifecycle (): Lifecycle {
  return { draining: false, fault: null }
}
