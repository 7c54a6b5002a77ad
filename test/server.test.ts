import { describe, it, expect } from 'vitest'
import { spawn } from 'node:child_process'
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

describe('npm start with nothing configured', () => {
  it('runs embedded Redis and the simulator, is ready, and stops everything on SIGTERM', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'kg-server-'))
    const env: Record<string, string> = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', DATA_DIR: dataDir, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info' }
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (c: Buffer) => { out += c.toString() })
    child.stderr.on('data', (c: Buffer) => { out += c.toString() })
    try {
      let url: string | undefined
      for (let i = 0; i < 300 && url === undefined; i++) {
        await new Promise(resolve => setTimeout(resolve, 100))
        url = /Docs +(http:\/\/127\.0\.0\.1:\d+)\/docs/.exec(out)?.[1]
      }
      expect(url, out).toBeDefined()
      const ready = await fetch(`${url}/health/ready`)
      expect(ready.status).toBe(200)
      expect(out).toContain('UPSTREAM IS THE BUILT-IN SIMULATOR')
      expect(out).toMatch(/Dev key dev_\S+/)
      const redisPort = Number(/"url":"redis:\/\/127\.0\.0\.1:(\d+)"/.exec(out)?.[1])
      expect(await portOpen(redisPort)).toBe(true)

      child.kill('SIGTERM')
      const [code] = await once(child, 'exit')
      expect(code).toBe(0)
      expect(await portOpen(redisPort)).toBe(false)
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL')
      await rm(dataDir, { recursive: true, force: true })
    }
  })

  it('refuses a bad environment naming each variable, and exits 1', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
      cwd: root, env: { PATH: process.env.PATH ?? '', PORT: 'x', UPSTREAM_TIMEOUT_MS: '-1' }, stdio: ['ignore', 'pipe', 'pipe']
    })
    let err = ''
    child.stderr.on('data', (c: Buffer) => { err += c.toString() })
    const [code] = await once(child, 'exit')
    expect(code).toBe(1)
    expect(err).toContain('PORT')
    expect(err).toContain('UPSTREAM_TIMEOUT_MS')
  })
})
