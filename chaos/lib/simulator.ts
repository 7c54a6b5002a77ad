/**
 * The CometAPI simulator as its own process (`simulator/main.ts`), and a client for its control API.
 */
import { readFileSync } from 'node:fs'
import { request } from 'undici'
import type { CallbackPolicy, SimFault } from '../../simulator/app.ts'
import { ROOT } from '../../bench/lib/proc.ts'
import { spawnGroup, waitFor, type GroupProcess } from '../../test/helpers/group-process.ts'

export interface SimTaskView {
  task_id: string
  external_task_id: string | null
  prompt: string | null
  status: string
  created_at: number
  callbacks_sent: number
}

export interface SimCreate { at: number, externalTaskId: string | null, prompt: string | null, taskId: string | null }

export interface SimProcess {
  url: string
  apiKey: string
  proc: GroupProcess
  policy: (p: Partial<CallbackPolicy>) => Promise<void>
  fault: (f: SimFault) => Promise<void>
  clearFaults: () => Promise<void>
  tasks: () => Promise<SimTaskView[]>
  creates: () => Promise<SimCreate[]>
  stop: () => Promise<void>
}

async function call<T> (url: string, method: 'GET' | 'POST' | 'DELETE', body?: unknown): Promise<T> {
  const res = await request(url, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    headersTimeout: 5000,
    bodyTimeout: 5000
  })
  const text = await res.body.text()
  if (res.statusCode >= 300) throw new Error(`simulator ${method} ${url}: ${res.statusCode} ${text.slice(0, 200)}`)
  return JSON.parse(text) as T
}

export async function startSimulator (opts: {
  logPath: string
  apiKey: string
  processingAfterMs: number
  finishAfterMs: number
  failRatio: number
  callbacks: Partial<CallbackPolicy>
}): Promise<SimProcess> {
  const args = ['--import', 'tsx', 'simulator/main.ts', '0', '127.0.0.1', '--quiet',
    '--api-key', opts.apiKey,
    '--processing-after-ms', String(opts.processingAfterMs),
    '--finish-after-ms', String(opts.finishAfterMs),
    '--fail-ratio', String(opts.failRatio),
    '--callbacks', JSON.stringify(opts.callbacks)]
  const proc = spawnGroup('simulator', process.execPath, args, {
    logPath: opts.logPath,
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', NODE_ENV: 'production' }
  })
  let url: string
  try {
    url = await waitFor('the simulator to listen', () => {
      if (!proc.alive()) throw new Error(`the simulator exited; see ${opts.logPath}`)
      return /CometAPI simulator on (http:\/\/\S+)/.exec(readFileSync(opts.logPath, 'utf8'))?.[1]
    }, 30_000, 100)
  } catch (err) {
    await proc.stop()
    throw err
  }
  return {
    url,
    apiKey: opts.apiKey,
    proc,
    policy: async p => { await call(`${url}/_sim/callbacks`, 'POST', p) },
    fault: async f => { await call(`${url}/_sim/faults`, 'POST', f) },
    clearFaults: async () => { await call(`${url}/_sim/faults`, 'DELETE') },
    tasks: async () => (await call<{ tasks: SimTaskView[] }>(`${url}/_sim/tasks`, 'GET')).tasks,
    creates: async () => (await call<{ creates: SimCreate[] }>(`${url}/_sim/creates`, 'GET')).creates,
    stop: async () => { await proc.stop(3000) }
  }
}
