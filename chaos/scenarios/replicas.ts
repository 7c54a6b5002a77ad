/**
 * A gateway replica stopped during the load, then started again on its port (standalone Redis, AOF everysec):
 * - `replica-sigterm`: a graceful stop, as an orchestrator drains a pod: requests in flight must finish, new ones
 *   get 503 (which the balancer's clients retry), jobs in flight complete or are picked up again.
 * - `replica-sigkill`: a crash: its BullMQ jobs stall and its unacknowledged event-stream entries are claimed by
 *   the other replica only after their 30 s lock / idle time, so this case settles for longer.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { CaseDef } from '../lib/case.ts'
import { standalone, type StandaloneTopology } from '../lib/topologies.ts'

function replicaCase (signal: 'SIGTERM' | 'SIGKILL'): CaseDef<StandaloneTopology> {
  return {
    id: `replica-${signal.toLowerCase()}`,
    scenario: `replica-${signal.toLowerCase()}`,
    short: signal === 'SIGKILL',
    // BullMQ's lock (30 s) and stalled-check interval (30 s), and the stream's claim idle time (30 s, checked every
    // 10 s), bound how long a crashed replica's work waits: up to about a minute.
    settleMs: p => signal === 'SIGKILL' ? (p.short ? 50_000 : 75_000) : p.settleMs,
    topology: async ctx => await standalone(ctx, { appendfsync: 'everysec' }),
    fault: async f => {
      const plan = [{ share: 0.2, replica: 0 }, ...(f.profile.short ? [] : [{ share: 0.6, replica: 1 }])]
      for (const { share, replica } of plan) {
        await f.at(f.profile.durationMs * share)
        const t = Date.now()
        const { exitedInMs, code } = await f.stack.killReplica(replica, signal)
        const how = `exited in ${exitedInMs} ms (exit code ${code ?? '—'})`
        f.note(`${signal} to replica${replica} at ${share * 100}%: ${how}`)
        await sleep(500, undefined, { signal: f.signal })
        await f.stack.restartReplica(replica)
        f.ready(t)
      }
    }
  }
}

export const cases: Array<CaseDef<StandaloneTopology>> = [replicaCase('SIGTERM'), replicaCase('SIGKILL')]
