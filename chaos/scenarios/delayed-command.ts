/**
 * delayed-command: one Redis command of a create is held by the proxy for 3 s, past the gateway's 2 s command
 * timeout, and then let through: the client saw a timeout (503), the command still ran. The client retries with
 * the same Idempotency-Key. Two rows:
 * - `create-script`: the create Lua script (16 keys). The late run stores a task the caller was told failed; the
 *   retry must find it through the key's record (written by the same script), not make a second one.
 * - `transition-script`: a transition (13 keys): a late compare-and-set must change nothing a second time.
 * - `idem-read`: the read of the key's record on a retry (`HMGET`): a late read must not let a retry through twice.
 * (Before the create script wrote the key's record, a `SET … NX` reservation came first; holding it left the key
 * pending for 2 minutes. There is no such reservation any more.)
 * The proxy is one ordered stream per connection, so commands behind the held one wait too (as on a slow link).
 * The hold ends before 4 s so that the create's clean-up commands, queued behind it, do not time out themselves.
 */
import { waitFor } from '../../test/helpers/group-process.ts'
import type { CaseDef } from '../lib/case.ts'
import { idempotencyRead, taskScript } from '../lib/proxy.ts'
import { standalone, type StandaloneTopology } from '../lib/topologies.ts'

const HOLD_MS = 3000

const variants = [
  { id: 'create-script', match: taskScript(16), short: true },
  { id: 'transition-script', match: taskScript(13), short: false },
  { id: 'idem-read', match: idempotencyRead, short: false }
]

export const cases: Array<CaseDef<StandaloneTopology>> = variants.map(v => ({
  id: `delayed-command/${v.id}`,
  scenario: 'delayed-command',
  short: v.short,
  topology: async ctx => await standalone(ctx, { appendfsync: 'everysec', proxy: true }),
  fault: async (f, topo) => {
    const proxy = topo.proxy
    if (proxy === undefined) throw new Error('delayed-command needs the proxy')
    const shares = f.profile.short ? [0.2, 0.55] : [0.15, 0.4, 0.65]
    for (const share of shares) {
      await f.at(f.profile.durationMs * share)
      const before = proxy.holds.length
      proxy.hold({ name: v.id, match: v.match, count: 1, holdMs: HOLD_MS })
      // Readiness is measured from the moment a command is actually held (the next create after arming).
      const held = await waitFor('a create to reach the armed hold', () => proxy.holds[before], 10_000, 20)
      f.ready(held.at)
    }
    await f.at(f.profile.durationMs)
    // Keys shortened: enough to tell a task script from a reservation.
    for (const h of proxy.holds) {
      f.note(`held ${HOLD_MS} ms: ${h.command.replace(/\{kg\}:\S+/g, k => k.slice(0, 24) + '…')}`)
    }
    if (proxy.armed() > 0) throw new Error(`${proxy.armed()} hold(s) never matched a command`)
  }
}))
