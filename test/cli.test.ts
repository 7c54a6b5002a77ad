/**
 * The `kling-gateway` CLI run as a child process (node bin/kling-gateway.mjs, as `npx kling-gateway` runs it) against
 * the real app on a loopback port with the simulator: its exit codes, its --json output, its plain progress lines
 * when stderr is not a terminal, and the video it writes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Simulator } from '../simulator/app.ts'
import { KEYS, startHarness, type Harness } from './helpers/harness.ts'
import { makeJpeg, makePng } from './helpers/images.ts'

const BIN = fileURLToPath(new URL('../bin/kling-gateway.mjs', import.meta.url))

interface Run { code: number | null, stdout: string, stderr: string }

let h: Harness
let dir: string

/** Runs the CLI without blocking this process (the app it talks to lives here), bounded by a timeout. */
async function cli (args: string[], env: Record<string, string> = {}): Promise<Run> {
  return await new Promise(resolve => {
    const child = execFile(process.execPath, [BIN, ...args], {
      env: {
        PATH: process.env.PATH ?? '',
        KLING_GATEWAY_URL: h.config.publicBaseUrl ?? '',
        KLING_GATEWAY_KEY: KEYS.alice,
        ...env
      },
      timeout: 30_000
    }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : (child.exitCode ?? -1), stdout, stderr })
    })
  })
}

beforeAll(async () => {
  h = await startHarness({ listen: true, sim: { processingAfterMs: 50, finishAfterMs: 150 } })
  dir = mkdtempSync(join(tmpdir(), 'kg-cli-'))
  writeFileSync(join(dir, 'a.png'), makePng(640, 480))
  writeFileSync(join(dir, 'b.jpg'), makeJpeg(512, 512))
})

afterAll(async () => {
  await h?.close()
  rmSync(dir, { recursive: true, force: true })
})

describe('kling-gateway CLI', () => {
  it('submit a.png b.jpg --wait --out f.mp4 --json: exit 0, the task as JSON, the video written, plain progress',
    async () => {
      const out = join(dir, 'f.mp4')
      const run = await cli(['submit', join(dir, 'a.png'), join(dir, 'b.jpg'), '--prompt', 'two friends wave',
        '--mode', 'std', '--duration', '5', '--wait', '--out', out, '--json'])
      expect(run.stderr).not.toContain('kling-gateway:')
      expect(run.code).toBe(0)
      const task = JSON.parse(run.stdout) as { id: string, status: string, kind: string, upstream: { task_id: string } }
      expect(task).toMatchObject({ status: 'succeeded', kind: 'multi-image2video' })
      expect(existsSync(out)).toBe(true)
      expect(readFileSync(out).equals(Simulator.videoBytes(task.upstream.task_id))).toBe(true)
      // stderr is a pipe, not a terminal: one plain line per state, no bar redrawn with \r.
      expect(run.stderr).not.toContain('\r')
      const lines = run.stderr.trim().split('\n')
      expect(lines[0]).toMatch(new RegExp(`^\\[\\d+\\.\\ds\\] ${task.id} queued$`))
      expect(lines.some(l => l.includes(' succeeded upstream=' + task.upstream.task_id))).toBe(true)

      // The same task through status, list and events, each one JSON document.
      const status = await cli(['status', task.id, '--json'])
      expect(status.code).toBe(0)
      expect(JSON.parse(status.stdout)).toMatchObject({ id: task.id, status: 'succeeded' })
      const list = await cli(['list', '--limit', '5', '--json'])
      expect(list.code).toBe(0)
      expect((JSON.parse(list.stdout) as { data: Array<{ id: string }> }).data.map(t => t.id)).toContain(task.id)
      const events = await cli(['events', task.id, '--json'])
      expect(events.code).toBe(0)
      const types = (JSON.parse(events.stdout) as Array<{ type: string }>).map(e => e.type)
      expect(types[0]).toBe('video.queued')
      expect(types).toContain('video.succeeded')

      // A finished task cannot be canceled: the gateway's 409 is exit 2, with its problem on stdout.
      const cancel = await cli(['cancel', task.id, '--json'])
      expect(cancel.code).toBe(2)
      expect(JSON.parse(cancel.stdout)).toMatchObject({ error: { code: 'NOT_CANCELABLE', status: 409 } })
    })

  it('exit codes: unknown id 2, bad flag 1, no gateway 3, failed task 4', async () => {
    const unknown = await cli(['status', 'no-such-task', '--json'])
    expect(unknown.code).toBe(2)
    expect(JSON.parse(unknown.stdout)).toMatchObject({ error: { code: 'NOT_FOUND', status: 404 } })

    const badFlag = await cli(['status', 'x', '--no-such-flag'])
    expect(badFlag.code).toBe(1)
    expect(badFlag.stderr).toContain('--no-such-flag')

    const noKey = await cli(['list'], { KLING_GATEWAY_KEY: '' })
    expect(noKey.code).toBe(1)

    const unreachable = await cli(['list', '--url', 'http://127.0.0.1:1', '--json'])
    expect(unreachable.code).toBe(3)
    expect(JSON.parse(unreachable.stdout)).toMatchObject({ error: { code: 'UNREACHABLE' } })

    await fetch(`${h.sim.baseUrl}/_sim/options`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ outcome: 'failed' })
    })
    try {
      const failed = await cli(['submit', 'https://img.example.com/a.png', '--prompt', 'p', '--wait', '--json', '--quiet'])
      expect(failed.code).toBe(4)
      expect(JSON.parse(failed.stdout)).toMatchObject({ status: 'failed', kind: 'image2video' })
      expect(failed.stderr).toBe('')
    } finally {
      await fetch(`${h.sim.baseUrl}/_sim/options`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ outcome: 'succeed' })
      })
    }
  })
})
