import { readFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { ROOT } from './proc.ts'

export interface Machine {
  node: string
  cpu_model: string
  cpus: number
  mem_gib: number
  redis_server: string
  packages: Record<string, string>
}

function versionOf (pkg: string): string {
  try {
    const manifest = readFileSync(join(ROOT, 'node_modules', pkg, 'package.json'), 'utf8')
    return (JSON.parse(manifest) as { version: string }).version
  } catch {
    return 'missing'
  }
}

/** What a result line must say about where it was measured. */
export function machine (): Machine {
  let redis = 'unknown'
  try {
    redis = /v=(\S+)/.exec(execFileSync('redis-server', ['--version'], { encoding: 'utf8' }))?.[1] ?? redis
  } catch {}
  return {
    node: process.version,
    cpu_model: cpus()[0]?.model.trim() ?? 'unknown',
    cpus: cpus().length,
    mem_gib: Math.round(totalmem() / 2 ** 30),
    redis_server: redis,
    packages: Object.fromEntries(['fastify', 'ioredis', 'bullmq', 'undici', 'pino', 'tsx'].map(p => [p, versionOf(p)]))
  }
}
