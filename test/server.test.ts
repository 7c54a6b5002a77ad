import { describe, it, expect } from 'vitest'
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'
import { connect } from 'node:net'

const root = new URL('..', import.meta.url).pathname

async function portOpen (port: number): Promise<boolean> {
  return await new Promise(resolve => {
    const s = connect(port, '127.0.0.1')
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
}

interface Running { child: ChildProcessWithoutNullStreams, url: string, devKey: string, output: () => string }

/** `npm start` with nothing configured but a temp DATA_DIR and `over`; resolves once it prints its URLs. */
async function startServer (dataDir: string, over: Record<string, string> = {}): Promise<Running> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '/tmp',
    DATA_DIR: dataDir,
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: 'info',
    ...over
  }
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], { cwd: root, env, stdio: 'pipe' })
  let out = ''
  child.stdout.on('data', (c: Buffer) => { out += c.toString() })
  child.stderr.on('data', (c: Buffer) => { out += c.toString() })
  let url: string | undefined
  for (let i = 0; i < 300 && url === undefined && child.exitCode === null; i++) {
    await new Promise(resolve => setTimeout(resolve, 100))
    url = /Docs +(http:\/\/127\.0\.0\.1:\d+)\/docs/.exec(out)?.[1]
  }
  expect(url, out).toBeDefined()
  return { child, url: url as string, devKey: /Dev key (dev_\S+)/.exec(out)?.[1] ?? '', output: () => out }
}

/** Polls `url` until it answers `status`, at most `ms`. */
async function untilStatus (url: string, status: number, ms = 5000): Promise<Response> {
  let res = await fetch(url)
  for (let waited = 0; res.status !== status && waited < ms; waited += 20) {
    await new Promise(resolve => setTimeout(resolve, 20))
    res = await fetch(url)
  }
  return res
}

describe('npm start with nothing configured', () => {
  it('runs embedded Redis and the simulator, drains on SIGTERM while serving, then stops everything', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'kg-server-'))
    const drainMs = 1500
    const { child, url, devKey, output } = await startServer(dataDir, { SHUTDOWN_DRAIN_MS: String(drainMs) })
    try {
      const ready = await fetch(`${url}/health/ready`)
      expect(ready.status).toBe(200)
      expect(output()).toContain('UPSTREAM IS THE BUILT-IN SIMULATOR')
      expect(devKey).toMatch(/^dev_/)
      const redisPort = Number(/"url":"redis:\/\/127\.0\.0\.1:(\d+)"/.exec(output())?.[1])
      expect(await portOpen(redisPort)).toBe(true)

      const signalled = Date.now()
      const exited = once(child, 'exit')
      child.kill('SIGTERM')
      // Draining: readiness says 503 so traffic moves away, while everything else is still answered.
      const draining = await untilStatus(`${url}/health/ready`, 503, drainMs / 2)
      expect(draining.status).toBe(503)
      expect(await draining.json()).toEqual({ status: 'draining' })
      expect((await fetch(`${url}/health/live`)).status).toBe(200)
      const list = await fetch(`${url}/v1/videos`, { headers: { authorization: `Bearer ${devKey}` } })
      expect(list.status).toBe(200)
      expect(await list.json()).toEqual({ data: [], next_cursor: null })
      expect(Date.now() - signalled).toBeLessThan(drainMs)

      const [code] = await exited
      const took = Date.now() - signalled
      expect(code).toBe(0)
      // Not before the drain is over, and well within drain + SHUTDOWN_GRACE_MS (10 s).
      expect(took).toBeGreaterThanOrEqual(drainMs - 50)
      expect(took).toBeLessThan(drainMs + 10_000)
      expect(output()).toContain('draining: readiness answers 503, still serving')
      expect(await portOpen(redisPort)).toBe(false)
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL')
      await rm(dataDir, { recursive: true, force: true })
    }
  })

  it('skips the rest of the drain on a second signal, and still closes in order (exit 0)', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'kg-server-'))
    const { child, url, output } = await startServer(dataDir, { SHUTDOWN_DRAIN_MS: '60000' })
    try {
      const redisPort = Number(/"url":"redis:\/\/127\.0\.0\.1:(\d+)"/.exec(output())?.[1])
      const exited = once(child, 'exit')
      child.kill('SIGTERM')
      expect((await untilStatus(`${url}/health/ready`, 503)).status).toBe(503)
      const second = Date.now()
      child.kill('SIGTERM')
      const [code] = await exited
      expect(code).toBe(0)
      expect(Date.now() - second).toBeLessThan(10_000)
      expect(output()).toContain('second signal: skipping the rest of the drain')
      // The ordered close ran: the embedded redis-server is stopped, not left behind.
      expect(await portOpen(redisPort)).toBe(false)
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL')
      await rm(dataDir, { recursive: true, force: true })
    }
  })

  it('refuses a bad environment naming each variable, and exits 1', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
      cwd: root,
      env: { PATH: process.env.PATH ?? '', PORT: 'x', UPSTREAM_TIMEOUT_MS: '-1', SHUTDOWN_DRAIN_MS: '-5' },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let err = ''
    child.stderr.on('data', (c: Buffer) => { err += c.toString() })
    const [code] = await once(child, 'exit')
    expect(code).toBe(1)
    expect(err).toContain('PORT')
    expect(err).toContain('UPSTREAM_TIMEOUT_MS')
    expect(err).toContain('SHUTDOWN_DRAIN_MS')
  })
})
