/**
 * cluster-master-kill: Redis Cluster (3 masters + 3 replicas, node timeout 1 s, AOF everysec). Every gateway key
 * shares the `{kg}` hash tag, so one master holds them all; it is killed -9 during the load, its replica takes
 * over after the node timeout, and the old master is restarted and rejoins as a replica.
 */
import type { CaseDef } from '../lib/case.ts'
import { cluster, type ClusterTopology } from '../lib/topologies.ts'

const KEY = '{kg}:task:x'

export const cases: Array<CaseDef<ClusterTopology>> = [{
  id: 'cluster-master-kill',
  scenario: 'cluster-master-kill',
  short: false,
  stack: { minReplicasAcked: 1 },
  topology: async ctx => await cluster(ctx),
  fault: async (f, topo) => {
    await f.at(f.profile.durationMs * 0.3)
    const old = await topo.set.masterFor(KEY)
    const t = Date.now()
    await old.kill9()
    const next = await topo.set.waitNewMaster(KEY, old)
    const took = ((Date.now() - t) / 1000).toFixed(1)
    const slot = await topo.set.slotOf(KEY)
    f.note(`kill -9 of ${old.name} (master of slot ${slot}) at 30%: ${next.name} took over in ${took} s`)
    f.ready(t)
    await old.restart()
    f.note(`${old.name} restarted (rejoins as a replica)`)
  }
}]
