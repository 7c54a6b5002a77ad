/**
 * redis-kill9: Redis (standalone, AOF everysec) is killed -9 twice during the load and restarted on the same dir
 * and port after a second. A process crash loses nothing acknowledged with AOF on (the data is in the page cache),
 * so every 202 must survive; the gateway must answer 503 (never 500) while Redis is down and recover by itself.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { CaseDef } from '../lib/case.ts'
import { standalone, type StandaloneTopology } from '../lib/topologies.ts'

/** Redis stays down this long before it is restarted, as a supervisor's restart delay would. */
const DOWN_MS = 1000

export const cases: Array<CaseDef<StandaloneTopology>> = [{
  id: 'redis-kill9',
  scenario: 'redis-kill9',
  short: true,
  topology: async ctx => await standalone(ctx, { appendfsync: 'everysec' }),
  fault: async (f, topo) => {
    for (const share of [0.25, 0.6]) {
      await f.at(f.profile.durationMs * share)
      const t = Date.now()
      await topo.node.kill9()
      await sleep(DOWN_MS, undefined, { signal: f.signal })
      await topo.node.restart()
      f.note(`kill -9 of redis at ${share * 100}% of the load, restarted after ${DOWN_MS} ms`)
      f.ready(t)
    }
  }
}]
