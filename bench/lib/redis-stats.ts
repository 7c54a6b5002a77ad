import { Redis } from 'ioredis'
import { round } from './stats.ts'

export type CommandStats = Record<string, { calls: number, usec: number }>

/** INFO commandstats of a redis-server: calls and microseconds spent, per command. */
export async function commandStats (url: string): Promise<CommandStats> {
  const redis = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true })
  try {
    await redis.connect()
    const info = await redis.info('commandstats')
    const out: CommandStats = {}
    for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/gm)) {
      out[m[1]] = { calls: Number(m[2]), usec: Number(m[3]) }
    }
    return out
  } finally {
    redis.disconnect()
  }
}

/**
 * Redis commands per request between two snapshots (the gateway's background work, BullMQ polling and the like,
 * is included, so small fractions are noise), Redis-side microseconds per request, and the commands that took most
 * of that time (microseconds per request).
 */
export function perRequest (
  before: CommandStats,
  after: CommandStats,
  requests: number
): { commands: Record<string, number>, redis_usec: number, top_usec: Record<string, number> } {
  const n = Math.max(1, requests)
  const commands: Record<string, number> = {}
  const usecBy: Array<[string, number]> = []
  let usec = 0
  for (const [cmd, a] of Object.entries(after)) {
    if (cmd === 'info') continue
    const calls = a.calls - (before[cmd]?.calls ?? 0)
    const spent = a.usec - (before[cmd]?.usec ?? 0)
    usec += spent
    if (calls / n >= 0.01) commands[cmd] = round(calls / n, 2)
    if (spent > 0) usecBy.push([cmd, round(spent / n, 1)])
  }
  const top = usecBy.sort((a, b) => b[1] - a[1]).slice(0, 5)
  return { commands, redis_usec: round(usec / n, 1), top_usec: Object.fromEntries(top) }
}

/** CPU time the redis-server has used since it started (INFO cpu: used_cpu_sys + used_cpu_user), in ms. */
export async function redisCpuMs (url: string): Promise<number> {
  const redis = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true })
  try {
    await redis.connect()
    const info = await redis.info('cpu')
    const field = (name: string) => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? NaN)
    return (field('used_cpu_sys') + field('used_cpu_user')) * 1000
  } finally {
    redis.disconnect()
  }
}
