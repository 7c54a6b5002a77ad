/**
 * The first hour with `npm start` (issue 14): the real process (`node --import tsx src/server.ts`) on a temp
 * DATA_DIR, started and stopped by pid. Two gateways on one DATA_DIR share its embedded Redis, and neither stops it
 * while the other uses it; the dev key survives a restart; `.env` is read, the environment wins; `/` redirects;
 * Swagger UI assets and probes log no request line; a Redis outage is one warning per connection, not hundreds.
 */
import { afterAll, describe, expect, it } from 'vitest'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnGroup, waitFor, type GroupProcess } from './helpers/group-process.ts'
import { freePort, startRedisServer } from '../src/infra/embedded-redis.ts'
import { loadEnvFile } from '../src/infra/env-file.ts'
import { loadDevKey } from '../src/infra/dev-key.ts'

const root = new URL('..', import.meta.url).pathname
// Absolute, so that a gateway can run in a working directory of its own (its `.env`).
const TSX = join(root, 'node_modules/tsx/dist/loader.mjs')
const SERVER = join(root, 'src/server.ts')
const temp = mkdtempSync(join(tmpdir(), 'kg-first-hour-'))
const started: GroupProcess[] = []
const redisPids: number[] = []

interface Gateway { proc: GroupProcess, url: string, devKey: string, log: () => string }

/** A gateway with nothing configured but `env`; resolves once it prints its URLs. */
async function start (name: string, env: Record<string, string>, cwd = root): Promise<Gateway> {
  const proc = spawnGroup(name, process.execPath, ['--import', TSX, SERVER], {
    logPath: join(temp, `${name}.log`),
    cwd,
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: process.env.HOME ?? '/tmp',
      PORT: '0',
      HOST: '127.0.0.1',
      SHUTDOWN_DRAIN_MS: '0',
      ...env
    }
  })
  started.push(proc)
  const log = () => readFileSync(proc.logPath, 'utf8')
  const url = await waitFor(`${name} listening`, () => {
    if (!proc.alive()) throw new Error(`${name} exited: ${log().slice(-2000)}`)
    return /Docs +(http:\/\/127\.0\.0\.1:\d+)\/docs/.exec(log())?.[1]
  }, 60_000)
  return { proc, url, devKey: /Dev key (dev_\S+)/.exec(log())?.[1] ?? '', log }
}

function lock (dataDir: string): { redis: { pid: number, port: number }, users: Array<{ pid: number }> } {
  const state = JSON.parse(readFileSync(join(dataDir, 'redis.lock'), 'utf8'))
  redisPids.push(state.redis.pid)
  return state
}

function alive (pid: number): boolean {
  try { process.kill(pid, 0); return true } catch { return false }
}

afterAll(async () => {
  for (const proc of started) await proc.stop(3000)
  // A redis-server outlives its gateway on purpose; one a failed test left behind ends here (checked by name).
  for (const pid of redisPids) {
    let cmdline = ''
    try { cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8') } catch {}
    if (cmdline.startsWith('redis-server')) process.kill(pid, 'SIGKILL')
  }
  rmSync(temp, { recursive: true, force: true })
}, 30_000)

const CREATE = {
  image_list: [{ image: 'https://example.com/a.png' }, { image: 'https://example.com/b.png' }],
  prompt: 'two friends wave'
}

describe('two gateways on one DATA_DIR', () => {
  it('the second joins the first one\'s Redis; the first stopping leaves it to the second; the last stops it',
    async () => {
      const dataDir = join(temp, 'shared')
      const a = await start('a', { DATA_DIR: dataDir })
      const first = lock(dataDir)
      const b = await start('b', { DATA_DIR: dataDir })
      const second = lock(dataDir)
      expect(second.redis, 'b started a Redis of its own').toEqual(first.redis)
      expect(second.users.map(u => u.pid).sort()).toEqual([a.proc.pid, b.proc.pid].sort())
      expect(b.log()).toContain('joined the embedded redis-server of DATA_DIR')
      expect(b.devKey, 'one DATA_DIR, one dev key').toBe(a.devKey)
      for (const g of [a, b]) expect((await fetch(`${g.url}/health/ready`)).status).toBe(200)

      // A third on a's busy PORT: it joins, fails to listen, says so, and leaves the Redis to a and b.
      const busy = spawnGroup('busy', process.execPath, ['--import', TSX, SERVER], {
        logPath: join(temp, 'busy.log'),
        cwd: root,
        env: {
          PATH: process.env.PATH ?? '',
          HOME: process.env.HOME ?? '/tmp',
          DATA_DIR: dataDir,
          HOST: '127.0.0.1',
          PORT: new URL(a.url).port
        }
      })
      started.push(busy)
      expect((await busy.exited).code).toBe(1)
      expect(readFileSync(busy.logPath, 'utf8')).toContain(`PORT=${new URL(a.url).port} is in use`)
      expect(alive(first.redis.pid), 'the busy-PORT start stopped the Redis').toBe(true)
      expect(lock(dataDir).users.map(u => u.pid).sort()).toEqual([a.proc.pid, b.proc.pid].sort())
      expect((await fetch(`${a.url}/health/ready`)).status).toBe(200)

      // One store: a task made through a is read through b.
      const headers = { authorization: `Bearer ${a.devKey}`, 'content-type': 'application/json' }
      const created = await fetch(`${a.url}/v1/videos`, {
        method: 'POST', headers: { ...headers, 'idempotency-key': 'first-hour-1' }, body: JSON.stringify(CREATE)
      })
      expect(created.status).toBe(202)
      const { id } = await created.json() as { id: string }
      expect((await fetch(`${b.url}/v1/videos/${id}`, { headers })).status).toBe(200)

      // a owns the redis-server (its child), yet stopping a leaves it running for b.
      await a.proc.stop(10_000)
      expect(alive(first.redis.pid), 'a stopped the Redis b uses').toBe(true)
      expect(a.log()).toContain(`left the embedded redis-server running: gateway pid ${b.proc.pid} uses it`)
      expect((await fetch(`${b.url}/health/ready`)).status).toBe(200)
      expect((await fetch(`${b.url}/v1/videos/${id}`, { headers })).status).toBe(200)

      // b is the last: it stops the Redis and removes the lock.
      await b.proc.stop(10_000)
      await waitFor('redis-server stopped', () => alive(first.redis.pid) ? undefined : true, 10_000)
      expect(existsSync(join(dataDir, 'redis.lock'))).toBe(false)

      // A restart: same dev key, a fresh Redis on the same data (the task is still there).
      const c = await start('c', { DATA_DIR: dataDir })
      lock(dataDir)
      expect(c.devKey, 'the dev key changed on restart').toBe(a.devKey)
      expect(c.log()).toContain('an OPERATOR key')
      expect((await fetch(`${c.url}/v1/videos/${id}`, { headers })).status).toBe(200)

      // `/` goes to the docs (this build has no /dashboard); docs assets and probes log no request line.
      const home = await fetch(`${c.url}/`, { redirect: 'manual' })
      expect(home.status).toBe(302)
      // The dashboard is registered, so `/` goes there (without it, to /docs).
      expect(home.headers.get('location')).toBe('/dashboard')
      const before = c.log().length
      expect((await fetch(`${c.url}/docs/static/index.css`)).status).toBe(200)
      expect((await fetch(`${c.url}/health/live`)).status).toBe(200)
      expect((await fetch(`${c.url}/metrics`)).status).toBe(200)
      expect((await fetch(`${c.url}/v1/videos/${id}`, { headers })).status).toBe(200)
      await waitFor('the API request logged', () => c.log().slice(before).includes(`/v1/videos/${id}`) || undefined,
        5000)
      const lines = c.log().slice(before)
      expect(lines).not.toContain('/docs/static/index.css')
      expect(lines).not.toContain('/health/live')
      expect(lines).not.toContain('"/metrics"')
      await c.proc.stop(10_000)
    }, 240_000)
})

describe('.env', () => {
  it('is read from the working directory at start, and the real environment wins', async () => {
    const cwd = join(temp, 'with-env-file')
    const envPort = await freePort()
    const filePort = await freePort()
    rmSync(cwd, { recursive: true, force: true })
    const { mkdirSync } = await import('node:fs')
    mkdirSync(cwd, { recursive: true })
    writeFileSync(join(cwd, '.env'), `# a comment\nDATA_DIR=from-env-file\nPORT=${filePort}\n`)
    const g = await start('env', { PORT: String(envPort) }, cwd)
    lock(join(cwd, 'from-env-file'))
    expect(g.url, 'PORT from the environment wins over .env').toBe(`http://127.0.0.1:${envPort}`)
    expect(existsSync(join(cwd, 'from-env-file', 'dev-key')), 'DATA_DIR from .env was not used').toBe(true)
    expect(g.log()).toContain('read .env')
    await g.proc.stop(10_000)
  }, 120_000)

  it('loadEnvFile: a missing file is fine; set variables win, empty ones are filled', () => {
    const path = join(temp, 'unit.env')
    expect(loadEnvFile(join(temp, 'absent.env'), {}).names).toEqual([])
    writeFileSync(path, 'A=from-file\nB="quoted value"\nC=from-file\n')
    const env: NodeJS.ProcessEnv = { A: 'real', C: '' }
    expect(loadEnvFile(path, env).names.sort()).toEqual(['B', 'C'])
    expect(env).toEqual({ A: 'real', B: 'quoted value', C: 'from-file' })
  })
})

describe('the dev key', () => {
  it('is kept in DATA_DIR/dev-key with mode 0600, the same until rotated', async () => {
    const dir = join(temp, 'dev-key')
    const one = await loadDevKey(dir)
    expect(one.created).toBe(true)
    expect(statSync(one.path).mode & 0o777).toBe(0o600)
    expect((await loadDevKey(dir)).key).toBe(one.key)
    const rotated = await loadDevKey(dir, { rotate: true })
    expect(rotated.key).not.toBe(one.key)
    expect((await loadDevKey(dir)).key).toBe(rotated.key)
    expect(statSync(one.path).mode & 0o777).toBe(0o600)
  })
})

describe('a Redis outage', () => {
  it('turns readiness 503 with one warning per connection, not one per reconnect, and back to 200', async () => {
    const dir = join(temp, 'outside-redis')
    const redis = await startRedisServer({ dir, persist: false })
    redisPids.push(redis.process.pid ?? 0)
    const g = await start('outage', { DATA_DIR: join(temp, 'outage-data'), REDIS_URL: redis.url })
    expect((await fetch(`${g.url}/health/ready`)).status).toBe(200)
    const before = g.log().length
    redis.process.kill('SIGKILL')
    await waitFor('ready 503', async () => (await fetch(`${g.url}/health/ready`)).status === 503 || undefined, 10_000)
    // ioredis retries every ~50-2000 ms, heartbeats and dispatches every few seconds: before, each retry of each
    // connection and each failed beat was a warning.
    await new Promise(resolve => setTimeout(resolve, 8000))
    const messages = g.log().slice(before).split('\n').filter(l => l.includes('"level":40'))
      .map(l => (JSON.parse(l) as { msg: string }).msg)
    const counts = new Map<string, number>()
    for (const m of messages) counts.set(m, (counts.get(m) ?? 0) + 1)
    expect(messages.filter(m => m.includes('connection lost')).length, messages.join('\n')).toBeGreaterThan(5)
    // One per connection or periodic task; only the event readers are several connections of one name.
    for (const [m, n] of counts) {
      expect(n, `${n} × ${m}`).toBeLessThanOrEqual(m.startsWith('redis (event reader)') ? 3 : 1)
    }
    const again = await startRedisServer({ dir, port: redis.port, persist: false })
    redisPids.push(again.process.pid ?? 0)
    await waitFor('ready 200', async () => (await fetch(`${g.url}/health/ready`)).status === 200 || undefined, 20_000)
    expect(g.log().slice(before)).toContain('redis: connection back')
    await g.proc.stop(10_000)
    await again.stop()
  }, 120_000)
})
