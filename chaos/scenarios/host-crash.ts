/**
 * host-crash: what a machine crash leaves on disk. A process crash keeps everything written to the page cache; a
 * host crash keeps only what was fsynced. So Redis is killed -9 and its AOF directory replaced, before the
 * restart, by a copy of what was on disk:
 * - `always`: every acknowledged write was fsynced before its reply, so the disk holds exactly the file as it is
 *   at the crash; Redis is frozen (SIGSTOP), the directory copied, killed -9 and the copy restored. Nothing
 *   acknowledged may be lost.
 * - `everysec`: fsync runs once a second, so the disk may lack up to the last second. The directory is copied
 *   one second before the kill (while running: no rewrite runs, so the copy is consistent) and that copy restored:
 *   up to a second of acknowledged writes is gone, and this row shows what that does to tasks, keys and events.
 */
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { CaseDef } from '../lib/case.ts'
import { standalone, type StandaloneTopology } from '../lib/topologies.ts'

/** The fsync interval of appendfsync everysec: at worst this much of the latest writes was not yet on disk. */
const FSYNC_LAG_MS = 1000

export const cases: Array<CaseDef<StandaloneTopology>> = (['always', 'everysec'] as const).map(mode => ({
  id: `host-crash/${mode}`,
  scenario: 'host-crash',
  short: false,
  topology: async ctx => await standalone(ctx, { appendfsync: mode }),
  fault: async (f, topo) => {
    const copy = join(topo.node.dir, '..', 'aof-at-crash')
    const crashAt = f.profile.durationMs * 0.4
    if (mode === 'everysec') {
      await f.at(crashAt - FSYNC_LAG_MS)
      topo.node.copyAof(copy)
      await f.at(crashAt)
    } else {
      await f.at(crashAt)
      topo.node.pause()
      topo.node.copyAof(copy)
    }
    const t = Date.now()
    await topo.node.kill9()
    topo.node.restoreAof(copy)
    await sleep(500, undefined, { signal: f.signal })
    await topo.node.restart()
    f.note(mode === 'everysec'
      ? `host crash at 40% of the load: AOF restored from ${FSYNC_LAG_MS} ms before the kill`
      : 'host crash at 40% of the load: AOF as it was at the kill (everything was fsynced)')
    f.ready(t)
  }
}))
