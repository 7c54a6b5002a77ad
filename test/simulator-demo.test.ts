/**
 * The simulator for people (issue 14): a demo pace by default (~20 s from queued to succeeded, set by the
 * SIMULATOR_* variables), a real MP4 as every task's video (served as video/mp4, by range too), a fixed port, and a
 * control API that answers loopback peers only. No harness: the defaults under test are the ones `npm start` and
 * `npm run simulator` use, which the harness overrides.
 */
import { describe, it, expect } from 'vitest'
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { networkInterfaces, tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { randomUUID } from 'node:crypto'
import { loadConfig } from '../src/config/index.ts'
import { createUpstream } from '../src/upstream/factory.ts'
import type { UpstreamAdapter } from '../src/upstream/adapter.ts'
import { DEMO_PACE, Simulator } from '../simulator/app.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))

/** A port that was free a moment ago (the kernel's pick, then released). */
async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  await new Promise(resolve => server.close(resolve))
  return port
}

/** Holds `port` on loopback until released; null when someone else holds it already (just as good here). */
async function occupy (port: number): Promise<Server | null> {
  const server = createServer()
  return await new Promise(resolve => {
    server.once('error', () => resolve(null))
    server.listen(port, '127.0.0.1', () => resolve(server))
  })
}

interface Pace { auto: boolean, processingAfterMs: number, finishAfterMs: number, outcome: string, failRatio: number }
async function paceOf (baseUrl: string): Promise<Pace> {
  return ((await (await fetch(`${baseUrl}/_sim/state`)).json()) as { pace: Pace }).pace
}

/** `npm run simulator` as a child process; resolves with its printed URL once it listens. */
async function runStandalone (args: string[], env: Record<string, string>) {
  const child = spawn(process.execPath, ['--import', 'tsx', 'simulator/main.ts', ...args, '--quiet'], {
    cwd: ROOT, env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env }, stdio: 'pipe'
  })
  let out = ''
  child.stdout.on('data', (c: Buffer) => { out += c.toString() })
  child.stderr.on('data', (c: Buffer) => { out += c.toString() })
  let url: string | undefined
  for (let i = 0; i < 300 && url === undefined && child.exitCode === null; i++) {
    await new Promise(resolve => setTimeout(resolve, 50))
    url = /CometAPI simulator on (http:\/\/\S+)/.exec(out)?.[1]
  }
  const stop = async () => {
    if (child.exitCode !== null) return
    const exited = new Promise(resolve => child.once('exit', resolve))
    child.kill('SIGTERM')
    await exited
  }
  if (url === undefined) { await stop(); throw new Error(`the simulator did not start: ${out}`) }
  return { url, output: () => out, stop }
}

/** Polls the adapter until the task is terminal, at most `ms`; `seen` collects every status it answered. */
async function untilTerminal (up: UpstreamAdapter, taskId: string, ms: number, seen: string[] = []) {
  const started = Date.now()
  for (;;) {
    const task = await up.query('text2video', taskId)
    if (task !== null && seen.at(-1) !== task.status) seen.push(task.status)
    if (task !== null && (task.status === 'succeed' || task.status === 'failed')) return task
    if (Date.now() - started > ms) throw new Error(`task ${taskId} not terminal after ${ms} ms`)
    await new Promise(resolve => setTimeout(resolve, 25))
  }
}

/** The top-level ISO BMFF boxes of `bytes`: type and size, in order. */
function boxes (bytes: Buffer): Array<{ type: string, size: number }> {
  const out: Array<{ type: string, size: number }> = []
  for (let at = 0; at + 8 <= bytes.length && out.length < 100;) {
    const size = bytes.readUInt32BE(at)
    out.push({ type: bytes.toString('latin1', at + 4, at + 8), size })
    if (size < 8) break
    at += size
  }
  return out
}

const hasFfprobe = spawnSync('ffprobe', ['-version']).status === 0

describe('the demo pace', () => {
  it('is the default of npm start: processing after 3 s, succeeded at ~20 s, no failures', () => {
    const { simulator } = loadConfig({}).upstream
    expect(simulator).toEqual({ port: undefined, ...DEMO_PACE, failRatio: 0 })
    expect(DEMO_PACE.processingAfterMs).toBeGreaterThanOrEqual(1000)
    expect(DEMO_PACE.finishAfterMs).toBeGreaterThanOrEqual(15_000)
    expect(DEMO_PACE.finishAfterMs).toBeLessThanOrEqual(30_000)
    // The class's own defaults stay fast: tests that build a Simulator without a pace must not wait 20 s.
    expect(new Simulator().opts).toMatchObject({ processingAfterMs: 200, finishAfterMs: 600 })
  })

  it('the variables are checked: a bad one is named at start', () => {
    for (const [name, value] of [['SIMULATOR_FINISH_AFTER_MS', '-1'], ['SIMULATOR_FAIL_RATIO', '1.5'],
      ['SIMULATOR_PORT', '70000'], ['SIMULATOR_PROCESSING_AFTER_MS', 'soon']]) {
      expect(() => loadConfig({ [name]: value }), name).toThrow(name)
    }
  })

  it('npm run simulator: the demo pace, on SIMULATOR_PORT, and says where its control API is', async () => {
    const port = await freePort()
    const sim = await runStandalone([], { SIMULATOR_PORT: String(port) })
    try {
      expect(sim.url).toBe(`http://127.0.0.1:${port}`)
      expect(sim.output()).toContain(`control API under http://127.0.0.1:${port}/_sim`)
      expect(await paceOf(sim.url)).toEqual({ auto: true, ...DEMO_PACE, outcome: 'succeed', failRatio: 0 })
    } finally {
      await sim.stop()
    }
  })

  it('npm run simulator: the variables set its pace, and a flag beats its variable', async () => {
    const env = {
      SIMULATOR_PROCESSING_AFTER_MS: '1234', SIMULATOR_FINISH_AFTER_MS: '5678', SIMULATOR_FAIL_RATIO: '0.25'
    }
    const sim = await runStandalone(['0', '127.0.0.1', '--finish-after-ms', '999'], env)
    try {
      expect(await paceOf(sim.url)).toMatchObject({ processingAfterMs: 1234, finishAfterMs: 999, failRatio: 0.25 })
    } finally {
      await sim.stop()
    }
  })
})

describe('UPSTREAM=simulator applies the SIMULATOR_* variables', () => {
  it('pace and port: a task goes submitted → processing → succeed on time, its video an MP4', async () => {
    const port = await freePort()
    const config = loadConfig({
      SIMULATOR_PORT: String(port), SIMULATOR_PROCESSING_AFTER_MS: '150', SIMULATOR_FINISH_AFTER_MS: '400'
    })
    const up = await createUpstream(config)
    try {
      expect(up.baseUrl).toBe(`http://127.0.0.1:${port}`)
      expect(await paceOf(up.baseUrl)).toMatchObject({ processingAfterMs: 150, finishAfterMs: 400, failRatio: 0 })
      const created = Date.now()
      const task = await up.create('text2video', { prompt: 'a harbour at dawn', external_task_id: randomUUID() })
      expect(task.status).toBe('submitted')
      const seen: string[] = []
      const done = await untilTerminal(up, task.taskId, 5000, seen)
      expect(seen).toEqual(['submitted', 'processing', 'succeed'])
      expect(Date.now() - created).toBeGreaterThanOrEqual(400)
      const res = await fetch(done.videos[0].url)
      expect(res.headers.get('content-type')).toBe('video/mp4')
      const bytes = Buffer.from(await res.arrayBuffer())
      expect(bytes.toString('latin1', 4, 8)).toBe('ftyp')
    } finally {
      await up.close()
    }
  })

  it('SIMULATOR_FAIL_RATIO=1: every task ends failed', async () => {
    const up = await createUpstream(loadConfig({
      SIMULATOR_PORT: String(await freePort()),
      SIMULATOR_FAIL_RATIO: '1',
      SIMULATOR_PROCESSING_AFTER_MS: '10',
      SIMULATOR_FINISH_AFTER_MS: '50'
    }))
    try {
      const task = await up.create('text2video', { prompt: 'a storm', external_task_id: randomUUID() })
      expect((await untilTerminal(up, task.taskId, 5000)).status).toBe('failed')
    } finally {
      await up.close()
    }
  })

  it('port 4010 taken and SIMULATOR_PORT unset: a free port instead; SIMULATOR_PORT taken: an error', async () => {
    const held = await occupy(4010)
    try {
      const up = await createUpstream(loadConfig({}))
      try {
        expect(new URL(up.baseUrl).port).not.toBe('4010')
        expect((await fetch(`${up.baseUrl}/_sim/tasks`)).status).toBe(200)
      } finally {
        await up.close()
      }
      await expect(createUpstream(loadConfig({ SIMULATOR_PORT: '4010' }))).rejects.toThrow(/EADDRINUSE/)
    } finally {
      held?.close()
    }
  })
})

describe('the video is a real MP4', () => {
  it('ftyp first, a movie, and the task id in a trailing free box: different bytes per task', () => {
    const a = Simulator.videoBytes('861000000000000001')
    const b = Simulator.videoBytes('861000000000000002')
    const types = boxes(a).map(x => x.type)
    expect(types[0]).toBe('ftyp')
    expect(types).toContain('moov')
    expect(types).toContain('mdat')
    expect(types.at(-1)).toBe('free')
    expect(boxes(a).reduce((n, x) => n + x.size, 0)).toBe(a.length)
    expect(a.toString('latin1')).toContain('task 861000000000000001')
    expect(a.equals(b)).toBe(false)
    expect(a.length).toBeLessThanOrEqual(100 * 1024)
  })

  it.skipIf(!hasFfprobe)('ffprobe reads it: H.264, 320x240, a duration > 0', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kg-mp4-'))
    try {
      const file = join(dir, 'video.mp4')
      writeFileSync(file, Simulator.videoBytes('861000000000000003'))
      const entries = 'format=duration:stream=codec_name,width,height'
      const probe = spawnSync('ffprobe', ['-v', 'error', '-show_entries', entries, '-of', 'json', file],
        { encoding: 'utf8', timeout: 10_000 })
      expect(probe.status, probe.stderr).toBe(0)
      const info = JSON.parse(probe.stdout) as { format: { duration: string }, streams: Array<Record<string, unknown>> }
      expect(Number(info.format.duration)).toBeGreaterThan(0)
      expect(info.streams[0]).toMatchObject({ codec_name: 'h264', width: 320, height: 240 })
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('served as video/mp4 with Content-Length, and by range (206, 416)', async () => {
    const sim = new Simulator({ auto: false })
    await sim.listen()
    try {
      const task = sim.create({ prompt: 'p', image_list: [{ image: 'x' }] })
      sim.setStatus(task.task_id, 'succeed')
      const url = (sim.taskView(task).task_result as { videos: Array<{ url: string }> }).videos[0].url
      const expected = Simulator.videoBytes(task.task_id)
      const size = expected.length
      const whole = await fetch(url)
      expect(whole.status).toBe(200)
      expect(whole.headers.get('content-type')).toBe('video/mp4')
      expect(whole.headers.get('accept-ranges')).toBe('bytes')
      expect(Number(whole.headers.get('content-length'))).toBe(size)
      expect(Buffer.from(await whole.arrayBuffer()).equals(expected)).toBe(true)
      const cases: Array<[string, number, number]> = [['bytes=0-99', 0, 99], ['bytes=-10', size - 10, size - 1],
        [`bytes=${size - 6}-`, size - 6, size - 1], [`bytes=${size - 4}-${size + 100}`, size - 4, size - 1]]
      for (const [range, start, end] of cases) {
        const part = await fetch(url, { headers: { range } })
        expect(part.status, range).toBe(206)
        expect(part.headers.get('content-type')).toBe('video/mp4')
        expect(part.headers.get('content-range')).toBe(`bytes ${start}-${end}/${size}`)
        expect(Buffer.from(await part.arrayBuffer()).equals(expected.subarray(start, end + 1)), range).toBe(true)
      }
      for (const range of [`bytes=${size}-`, 'bytes=-0', 'bytes=50-10']) {
        const bad = await fetch(url, { headers: { range } })
        expect(bad.status, range).toBe(416)
        expect(bad.headers.get('content-range')).toBe(`bytes */${size}`)
      }
      expect((await fetch(url.replace(task.task_id, '1'))).status).toBe(404)
    } finally {
      await sim.close()
    }
  })
})

/** A non-loopback address of this host, to reach a server from somewhere other than 127.0.0.1. */
const external = Object.values(networkInterfaces()).flat()
  .find(i => i !== undefined && i.family === 'IPv4' && !i.internal)?.address

describe('the control API', () => {
  it.skipIf(external === undefined)('answers loopback peers only, unless openControl; videos answer anyone',
    async () => {
      for (const openControl of [false, true]) {
        const sim = new Simulator({ auto: false, openControl })
        await sim.listen(0, '0.0.0.0')
        try {
          const port = new URL(sim.baseUrl).port
          const task = sim.create({ prompt: 'p', image_list: [{ image: 'x' }] })
          sim.setStatus(task.task_id, 'succeed')
          const from = `http://${external as string}:${port}`
          for (const path of ['/_sim/state', '/_sim/tasks', '/_sim/creates']) {
            expect((await fetch(`${from}${path}`)).status, path).toBe(openControl ? 200 : 403)
            expect((await fetch(`http://127.0.0.1:${port}${path}`)).status, path).toBe(200)
          }
          const reset = await fetch(`${from}/_sim/reset`, { method: 'POST' })
          expect(reset.status).toBe(openControl ? 200 : 403)
          expect(sim.tasks.size).toBe(openControl ? 0 : 1)
          if (!openControl) expect((await fetch(`${from}/_sim/videos/${task.task_id}.mp4`)).status).toBe(200)
        } finally {
          await sim.close()
        }
      }
    })
})
