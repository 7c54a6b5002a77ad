/**
 * delayed-command: one Redis command of a create is held by the proxy for 3 s, past the gateway's 2 s command
 * timeout, and then let through: the client saw a timeout (503), the command still ran. The client retries with
 * the same Idempotency-Key. Two rows:
 * - `create-script`: the create Lua script (9 keys). The late run stores a task the caller was told failed;
 *   if the key was freed meanwhile, the retry makes a second task, and both are submitted: paid twice.
 * - `idem-reserve`: the Idempotency-Key reservation (`SET … NX`). The late run may reserve a key nobody completes.
 * The proxy is one ordered stream per connection, so commands behind the held one wait too (as on a slow link).
 * The hold ends before 4 s so that the create's clean-up commands, queued behind it, do not time out themselves.
 */
import { waitFor } from '../../test/helpers/group-process.ts'
import type { CaseDef } from '../lib/case.ts'
import { idempotencyReservation, taskScript } from '../lib/proxy.ts'
import { standalone, type StandaloneTopology } from '../lib/topologies.ts'

const HOLD_MS = 3000

const variants = [
  { id: 'create-script', match: taskScript(9), short: true },
  { id: 'idem-reserve', match: idempotencyReservation, short: false }
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
