/**
 * Sentinel failovers under load (1 master, 2 replicas, 3 sentinels; AOF everysec):
 * - `sentinel-planned`: SENTINEL FAILOVER (what an operator does before maintenance);
 * - `sentinel-unplanned`: kill -9 of the master; the sentinels agree it is down after 1 s and promote a replica.
 *   The old master is restarted afterwards and rejoins as a replica.
 * Replication is asynchronous: writes the old master acknowledged but had not sent on are lost with it unless the
 * gateway waits for a replica (REDIS_MIN_REPLICAS_ACKED=1, a setting the fix introduces).
 */
import { waitFor } from '../../test/helpers/group-process.ts'
import type { RedisNode } from '../../test/helpers/redis-topology.ts'
import type { CaseDef } from '../lib/case.ts'
import { sentinel, type SentinelTopology } from '../lib/topologies.ts'

/**
 * Waits until the sentinels have made `node` a replica; returns the seconds since `since`. The deposed master keeps
 * accepting writes until then (the sentinels tell it only after their next INFO of it, up to 10 s later), so the
 * case waits for that moment: whatever the gateway wrote there in between is lost when it resyncs.
 */
async function demoted (node: RedisNode, since: number): Promise<number> {
  const isReplica = async () => await node.role() === 'slave' ? true : undefined
  await waitFor(`${node.name} to be made a replica`, isReplica, 30_000, 200)
  return (Date.now() - since) / 1000
}

export const cases: Array<CaseDef<SentinelTopology>> = [
  {
    id: 'sentinel-planned',
    scenario: 'sentinel-planned',
    short: true,
    stack: { minReplicasAcked: 1 },
    topology: async ctx => await sentinel(ctx),
    fault: async (f, topo) => {
      for (const share of f.profile.short ? [0.3] : [0.3, 0.65]) {
        await f.at(f.profile.durationMs * share)
        const old = await topo.set.master()
        const t = Date.now()
        await topo.set.failover()
        const next = await topo.set.waitNewMaster(old)
        const took = ((Date.now() - t) / 1000).toFixed(1)
        f.note(`SENTINEL FAILOVER at ${share * 100}%: ${old.name} → ${next.name} in ${took} s`)
        f.ready(t)
        f.note(`${old.name} stayed a writable master until ${(await demoted(old, t)).toFixed(1)} s after the failover`)
      }
    }
  },
  {
    id: 'sentinel-unplanned',
    scenario: 'sentinel-unplanned',
    short: false,
    stack: { minReplicasAcked: 1 },
    topology: async ctx => await sentinel(ctx),
    fault: async (f, topo) => {
      await f.at(f.profile.durationMs * 0.3)
      const old = await topo.set.master()
      const t = Date.now()
      await old.kill9()
      const next = await topo.set.waitNewMaster(old)
      const took = ((Date.now() - t) / 1000).toFixed(1)
      f.note(`kill -9 of master ${old.name} at 30%: sentinels promoted ${next.name} in ${took} s`)
      f.ready(t)
      await old.restart()
      const back = Date.now()
      const after = (await demoted(old, back)).toFixed(1)
      f.note(`${old.name} restarted as a master of its own; a replica again after ${after} s`)
    }
  }
]
