/** The Redis each case runs on, built from test/helpers/redis-topology.ts, with logs in the case's log dir. */
import { join } from 'node:path'
import { track } from '../../bench/lib/proc.ts'
import {
  redisInfo, startCluster, startSentinelSet, startStandalone,
  type ClusterSet, type Fsync, type RedisNode, type SentinelSet
} from '../../test/helpers/redis-topology.ts'
import type { CaseContext, Topology } from './case.ts'
import { RedisProxy } from './proxy.ts'

/** One line per node: role, whom it replicates, its replication offset and how many keys it holds. */
async function describeNodes (nodes: RedisNode[]): Promise<string[]> {
  return await Promise.all(nodes.map(async n => {
    if (!n.alive()) return `${n.name}: down`
    try {
      const repl = await redisInfo(n.port, 'replication')
      const keys = Number(await n.command('DBSIZE'))
      const of = repl.role === 'slave' ? ` of :${repl.master_port} (link ${repl.master_link_status})` : ''
      return `${n.name} :${n.port}: ${repl.role}${of}, offset ${repl.master_repl_offset}, ${keys} keys`
    } catch (err) {
      return `${n.name}: ${(err as Error).message}`
    }
  }))
}

export interface StandaloneTopology extends Topology { node: RedisNode, proxy?: RedisProxy }

/** One redis-server with AOF on; with `proxy`, the gateway reaches it through the fault proxy. */
export async function standalone (
  ctx: CaseContext,
  opts: { appendfsync: Fsync, proxy?: boolean }
): Promise<StandaloneTopology> {
  const redis = await startStandalone({
    dir: join(ctx.dataDir, 'redis'),
    logDir: ctx.logDir,
    appendfsync: opts.appendfsync
  })
  let proxy: RedisProxy | undefined
  let untrack = async () => {}
  if (opts.proxy === true) {
    const p = await RedisProxy.start({ port: redis.node.port })
    proxy = p
    untrack = track('redis proxy', undefined, async () => await p.close())
  }
  const via = proxy === undefined ? '' : ', through the fault proxy'
  return {
    target: { kind: 'url', url: proxy?.url ?? redis.url },
    describe: `standalone, AOF appendfsync ${opts.appendfsync}${via}`,
    logs: [redis.node.logPath],
    diagnose: async () => await describeNodes([redis.node]),
    node: redis.node,
    proxy,
    stop: async () => { await untrack(); await redis.stop() }
  }
}

export interface SentinelTopology extends Topology { set: SentinelSet }

export async function sentinel (ctx: CaseContext): Promise<SentinelTopology> {
  const set = await startSentinelSet({ dir: join(ctx.dataDir, 'redis'), logDir: ctx.logDir, appendfsync: 'everysec' })
  return {
    target: { kind: 'sentinel', sentinels: set.sentinelAddrs, name: set.masterName },
    describe: 'Sentinel: 1 master + 2 replicas + 3 sentinels (down-after 1 s), AOF everysec',
    logs: [...set.nodes, ...set.sentinels].map(n => n.logPath),
    diagnose: async () => [`sentinels name ${(await set.master()).name}`, ...await describeNodes(set.nodes)],
    set,
    stop: async () => await set.stop()
  }
}

export interface ClusterTopology extends Topology { set: ClusterSet }

export async function cluster (ctx: CaseContext): Promise<ClusterTopology> {
  const set = await startCluster({ dir: join(ctx.dataDir, 'redis'), logDir: ctx.logDir, appendfsync: 'everysec' })
  return {
    target: { kind: 'cluster', nodes: set.seeds },
    describe: 'Cluster: 3 masters + 3 replicas (node timeout 1 s), AOF everysec',
    logs: set.nodes.map(n => n.logPath),
    diagnose: async () => await describeNodes(set.nodes),
    set,
    stop: async () => await set.stop()
  }
}
