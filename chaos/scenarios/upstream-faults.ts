/**
 * upstream-faults: CometAPI misbehaves through the simulator's /_sim/faults during the load: 500s, 429 with
 * Retry-After, resets, hangs past the gateway's 3 s upstream timeout, creates accepted and then hung or reset, an
 * HTML page instead of JSON, and failing or lying queries. Redis is healthy (standalone, AOF everysec). Every task
 * must still end once, and none may be paid twice (the simulator refuses a second task for an external id, so a
 * second paid task would need a second gateway task).
 */
import type { SimFault } from '../../simulator/app.ts'
import type { CaseDef } from '../lib/case.ts'
import { standalone, type StandaloneTopology } from '../lib/topologies.ts'

const WAVE: SimFault[] = [
  { on: 'create', kind: 'http-error', status: 500, times: 3 },
  { on: 'create', kind: 'rate-limit', retryAfter: 1, times: 2 },
  { on: 'create', kind: 'reset', times: 2 },
  { on: 'create', kind: 'hang', times: 2 },
  { on: 'create', kind: 'accept-then-hang', times: 1 },
  { on: 'create', kind: 'accept-then-reset', times: 2 },
  { on: 'create', kind: 'html', status: 200, times: 1 },
  { on: 'query', kind: 'http-error', status: 502, times: 3 },
  { on: 'query', kind: 'reset', times: 2 },
  { on: 'query', kind: 'hang', times: 1 },
  { on: 'query', kind: 'not-found', times: 2 }
]

export const cases: Array<CaseDef<StandaloneTopology>> = [{
  id: 'upstream-faults',
  scenario: 'upstream-faults',
  short: true,
  topology: async ctx => await standalone(ctx, { appendfsync: 'everysec' }),
  fault: async f => {
    for (const share of f.profile.short ? [0.15, 0.5] : [0.1, 0.35, 0.6]) {
      await f.at(f.profile.durationMs * share)
      const t = Date.now()
      for (const fault of WAVE) await f.stack.sim.fault(fault)
      f.note(`${WAVE.length} upstream faults queued at ${share * 100}%`)
      // Upstream trouble must not make a replica unready: this should read about 0.
      f.ready(t)
    }
  }
}]
