/**
 * A gateway replica stopped during the load, then started again on its port (standalone Redis, AOF everysec).
 * Just before, a few creates are made to hang upstream after CometAPI has accepted them (`accept-then-hang`), so
 * that submissions are in flight when the replica goes: whoever finishes them must find the upstream task by its
 * external id, not pay for a second one.
 * - `replica-sigterm`: a graceful stop, as an orchestrator drains a pod: requests in flight must finish, new ones
 *   get 503 (which the balancer's clients retry), jobs in flight complete or are picked up again.
 * - `replica-sigkill`: a crash: its BullMQ jobs stall and its unacknowledged event-stream entries are claimed by
 *   the other replica only after their 30 s lock / idle time, so this case settles for longer.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { waitFor } from '../../test/helpers/group-process.ts'
import type { CaseDef, FaultContext } from '../lib/case.ts'
import { standalone, type StandaloneTopology } from '../lib/topologies.ts'

/** Makes the next `n` creates hang upstream after acceptance, and waits until they have been sent. */
async function hangCreates (f: FaultContext, n: number): Promise<void> {
  const before = (await f.stack.sim.creates()).length
  await f.stack.sim.fault({ on: 'create', kind: 'accept-then-hang', times: n })
  const sent = async () => (await f.stack.sim.creates()).length >= before + n ? true : undefined
  await waitFor(`${n} creates to hang upstream`, sent, 10_000, 50)
}

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
        await hangCreates(f, 3)
        const t = Date.now()
        const { exitedInMs, code } = await f.stack.killReplica(replica, signal)
        const how = `exited in ${exitedInMs} ms (exit code ${code ?? '—'})`
        f.note(`${signal} to replica${replica} at ${share * 100}%, 3 creates hanging upstream: ${how}`)
        await sleep(500, undefined, { signal: f.signal })
        await f.stack.restartReplica(replica)
        f.ready(t)
      }
    }
  }
}

export const cases: Array<CaseDef<StandaloneTopology>> = [replicaCase('SIGTERM'), replicaCase('SIGKILL')]
