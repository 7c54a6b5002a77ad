/**
 * UPSTREAM picks the adapter, and the simulator stays out of production: only src/upstream/simulator.ts imports it,
 * and only the factory imports that, lazily, when UPSTREAM=simulator.
 */
import { describe, it, expect } from 'vitest'
import { readdirSync, readFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { randomUUID } from 'node:crypto'
import { loadConfig } from '../src/config/index.ts'
import { createUpstream } from '../src/upstream/factory.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const secret = { CALLBACK_SECRET: 'c'.repeat(32), PUBLIC_BASE_URL: 'https://gateway.example.com' }

function sources (dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap(e => {
    const path = join(dir, e.name)
    if (e.isDirectory()) return sources(path)
    return e.name.endsWith('.ts') ? [relative(ROOT, path)] : []
  })
}

describe('createUpstream', () => {
  it('makes the adapter UPSTREAM names, at the base URL its variables give', async () => {
    const cometEnv = { COMETAPI_KEY: 'sk-factory-test', COMETAPI_BASE_URL: 'http://127.0.0.1:9/x', ...secret }
    const comet = await createUpstream(loadConfig(cometEnv))
    expect([comet.name, comet.baseUrl]).toEqual(['cometapi', 'http://127.0.0.1:9/x'])
    await comet.close()
    const klingEnv = { KLING_ACCESS_KEY: 'ak-factory', KLING_SECRET_KEY: 'sk-factory', ...secret }
    const kling = await createUpstream(loadConfig(klingEnv))
    expect([kling.name, kling.baseUrl]).toEqual(['kling', 'https://api-singapore.klingai.com'])
    await kling.close()
  })

  it('UPSTREAM=simulator: starts the in-process simulator, speaks CometAPI to it, stops it on close', async () => {
    const sim = await createUpstream(loadConfig({}))
    expect(sim.name).toBe('simulator')
    const ext = randomUUID()
    const task = await sim.create('text2video', { prompt: 'a quiet harbour at dawn', external_task_id: ext })
    expect((await sim.query('text2video', ext))?.taskId).toBe(task.taskId)
    const { baseUrl } = sim
    await sim.close()
    await expect(fetch(`${baseUrl}/_sim/state`)).rejects.toThrow()
  })

  it('no production module imports the simulator; the factory loads its adapter only when chosen', () => {
    const importers = sources(join(ROOT, 'src'))
      .filter(f => /^\s*import [^(]*from ['"][./]*simulator\//m.test(readFileSync(join(ROOT, f), 'utf8')))
    expect(importers).toEqual(['src/upstream/simulator.ts'])
    const staticAdapterImports = sources(join(ROOT, 'src'))
      .filter(f => /^\s*import [^(]*from ['"]\.\/simulator\.ts['"]/m.test(readFileSync(join(ROOT, f), 'utf8')))
    expect(staticAdapterImports).toEqual([])
    expect(readFileSync(join(ROOT, 'src/upstream/factory.ts'), 'utf8')).toContain("await import('./simulator.ts')")
  })
})
