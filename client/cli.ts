/**
 * `kling-gateway`, the command line on the typed client (client/index.ts). Results go to stdout (one JSON document
 * with --json, JSON lines for `events --follow`), progress and errors to stderr, and the exit code says what
 * happened, so scripts can rely on it (EXIT below, README "Client and CLI").
 */
import { parseArgs, type ParseArgsConfig } from 'node:util'
import {
  createGatewayClient, GatewayProblem, GatewayTimeout, GatewayUnreachable, TERMINAL,
  type GatewayClient, type Kind, type Task
} from './index.ts'

export const EXIT = { ok: 0, usage: 1, api: 2, unavailable: 3, taskFailed: 4, timeout: 5 } as const

class UsageError extends Error {}

const USAGE = `usage: kling-gateway <command> [options]

commands:
  submit [image…] --prompt P   create a task (0 images: text2video, 1: image2video, 2-4: multi-image2video)
         [--kind K] [--mode std|pro] [--duration 5|10] [--model M] [--aspect-ratio R] [--negative-prompt N]
         [--reference R] [--idempotency-key K] [--wait] [--out video.mp4] [--timeout seconds]
  wait <id> [--out video.mp4] [--timeout seconds]
  status <id>
  list [--status S] [--limit N] [--cursor C] [--reference R] [--attention]
  events <id> [--follow]
  cancel <id>
  download <id> --out video.mp4 [--index I]
  deliveries [--failed] [--endpoint ep_…] [--limit N]
  retry <delivery id>

every command: --url (or KLING_GATEWAY_URL), --key (or KLING_GATEWAY_KEY), --json, --quiet (no progress), --help
exit codes: 0 ok (task succeeded), 1 usage, 2 API error (4xx), 3 unavailable (5xx, network), 4 task failed or
canceled, 5 timeout`

const GLOBAL = {
  url: { type: 'string' },
  key: { type: 'string' },
  json: { type: 'boolean' },
  quiet: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' }
} as const satisfies NonNullable<ParseArgsConfig['options']>

const WAITING = { wait: { type: 'boolean' }, out: { type: 'string' }, timeout: { type: 'string' } } as const

const COMMANDS = {
  submit: {
    prompt: { type: 'string' },
    kind: { type: 'string' },
    mode: { type: 'string' },
    duration: { type: 'string' },
    model: { type: 'string' },
    'aspect-ratio': { type: 'string' },
    'negative-prompt': { type: 'string' },
    reference: { type: 'string' },
    'idempotency-key': { type: 'string' },
    ...WAITING
  },
  wait: { out: WAITING.out, timeout: WAITING.timeout },
  status: {},
  list: {
    status: { type: 'string' },
    limit: { type: 'string' },
    cursor: { type: 'string' },
    reference: { type: 'string' },
    attention: { type: 'boolean' }
  },
  events: { follow: { type: 'boolean', short: 'f' } },
  cancel: {},
  download: { out: WAITING.out, index: { type: 'string' } },
  deliveries: { failed: { type: 'boolean' }, endpoint: { type: 'string' }, limit: { type: 'string' } },
  retry: {}
} as const satisfies Record<string, NonNullable<ParseArgsConfig['options']>>

type Command = keyof typeof COMMANDS
type Values = Record<string, string | boolean | undefined>

interface Io {
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream & { isTTY?: boolean, columns?: number }
  env: Record<string, string | undefined>
}

const STATES: Task['status'][] = ['queued', 'submitted', 'processing', 'succeeded']

/**
 * The progress of one task on stderr: on a terminal a bar redrawn in place (state, elapsed time, upstream id),
 * otherwise one plain line per change, so logs and CI output stay readable.
 */
class Progress {
  private readonly started = Date.now()
  private task?: Task
  private last = ''
  private readonly timer?: NodeJS.Timeout

  constructor (private readonly err: Io['stderr'], private readonly enabled: boolean) {
    if (enabled && err.isTTY === true) {
      this.timer = setInterval(() => this.draw(), 250)
      this.timer.unref()
    }
  }

  private elapsed () { return `${((Date.now() - this.started) / 1000).toFixed(1)}s` }

  update (task: Task) {
    this.task = task
    if (!this.enabled) return
    const line = `${task.status}${task.upstream === null ? '' : ` upstream=${task.upstream.task_id}`}`
    if (this.err.isTTY === true) { this.draw(); return }
    if (line !== this.last) this.err.write(`[${this.elapsed()}] ${task.id} ${line}\n`)
    this.last = line
  }

  private draw () {
    const t = this.task
    if (t === undefined) return
    const step = t.status === 'failed' || t.status === 'canceled' ? STATES.length : STATES.indexOf(t.status) + 1
    const width = 20
    const filled = Math.round(width * step / STATES.length)
    const bar = '█'.repeat(filled) + '░'.repeat(width - filled)
    const upstream = t.upstream === null ? '' : `  upstream ${t.upstream.task_id}`
    this.err.write(`\r\x1b[2K[${bar}] ${t.status.padEnd(10)} ${this.elapsed().padStart(7)}${upstream}`)
  }

  stop () {
    if (this.timer === undefined) return
    clearInterval(this.timer)
    this.draw()
    this.err.write('\n')
  }
}

function parse (argv: string[]): { command: Command, values: Values, positionals: string[] } {
  const [command, ...rest] = argv
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    throw new UsageError('')
  }
  if (!Object.hasOwn(COMMANDS, command)) throw new UsageError(`unknown command "${command}"`)
  try {
    const { values, positionals } = parseArgs({
      args: rest,
      options: { ...GLOBAL, ...COMMANDS[command as Command] },
      allowPositionals: true,
      strict: true
    })
    return { command: command as Command, values: values as Values, positionals }
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
}

const str = (v: Values, name: string) => typeof v[name] === 'string' ? v[name] : undefined

function int (v: Values, name: string, min: number, max: number): number | undefined {
  const raw = str(v, name)
  if (raw === undefined) return undefined
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new UsageError(`--${name} must be an integer ${min}–${max}`)
  }
  return Number(raw)
}

function one (positionals: string[], what: string): string {
  if (positionals.length !== 1) throw new UsageError(`expected one ${what}`)
  return positionals[0]
}

function printResult (io: Io, json: boolean, value: unknown, human: string) {
  io.stdout.write(json ? JSON.stringify(value) + '\n' : human + '\n')
}

const taskLine = (t: Task) =>
  [t.id, t.kind, t.status, t.upstream?.task_id ?? '-', t.error === null ? '' : `${t.error.code}: ${t.error.message}`]
    .join('\t').trimEnd()

/** submit/wait after the task is known: follow it, then download. Returns the exit code. */
async function follow (client: GatewayClient, io: Io, v: Values, task: Task): Promise<number> {
  const timeout = int(v, 'timeout', 1, 86_400)
  const progress = new Progress(io.stderr, v.quiet !== true)
  progress.update(task)
  let final: Task
  try {
    final = TERMINAL.has(task.status)
      ? task
      : await client.wait(task.id, {
        timeoutMs: timeout === undefined ? undefined : timeout * 1000,
        onEvent: u => progress.update(u.task)
      })
    progress.update(final)
  } finally {
    progress.stop()
  }
  const out = str(v, 'out')
  if (final.status === 'succeeded' && out !== undefined) {
    const file = await client.download(final.id, out, timeout === undefined ? {} : { timeoutMs: timeout * 1000 })
    if (v.quiet !== true) io.stderr.write(`wrote ${file.path} (${file.bytes} bytes)\n`)
  }
  printResult(io, v.json === true, final, taskLine(final))
  return final.status === 'succeeded' ? EXIT.ok : EXIT.taskFailed
}

async function submit (client: GatewayClient, io: Io, v: Values, images: string[]): Promise<number> {
  const prompt = str(v, 'prompt')
  const inferred = images.length === 0 ? 'text2video' : images.length === 1 ? 'image2video' : 'multi-image2video'
  const kind = (str(v, 'kind') ?? inferred) as Kind
  if (!['multi-image2video', 'image2video', 'text2video'].includes(kind)) throw new UsageError(`unknown --kind ${kind}`)
  if (kind === 'text2video' && prompt === undefined) throw new UsageError('text2video needs --prompt')
  if (str(v, 'out') !== undefined && v.wait !== true) throw new UsageError('--out needs --wait')
  const duration = str(v, 'duration')
  // Fields the user did not name are left out, so the gateway's defaults and validation apply (every bad one named).
  const fields: Record<string, unknown> = {
    prompt,
    mode: str(v, 'mode'),
    duration,
    model_name: str(v, 'model'),
    aspect_ratio: str(v, 'aspect-ratio'),
    negative_prompt: str(v, 'negative-prompt'),
    reference: str(v, 'reference')
  }
  for (const k of Object.keys(fields)) if (fields[k] === undefined) delete fields[k]
  const task = await client.create(kind, { ...fields, images } as never, { idempotencyKey: str(v, 'idempotency-key') })
  if (v.wait !== true) {
    printResult(io, v.json === true, task, taskLine(task))
    return EXIT.ok
  }
  return await follow(client, io, v, task)
}

async function run (client: GatewayClient, io: Io, command: Command, v: Values, pos: string[]): Promise<number> {
  const json = v.json === true
  const { api, unwrap } = client
  switch (command) {
    case 'submit':
      return await submit(client, io, v, pos)
    case 'wait':
      return await follow(client, io, v, await client.get(one(pos, 'task id')))
    case 'status': {
      const task = await client.get(one(pos, 'task id'))
      printResult(io, json, task, taskLine(task))
      return EXIT.ok
    }
    case 'list': {
      if (pos.length > 0) throw new UsageError('list takes no arguments')
      const query = {
        status: str(v, 'status') as Task['status'] | undefined,
        limit: int(v, 'limit', 1, 100),
        cursor: str(v, 'cursor'),
        reference: str(v, 'reference'),
        attention: v.attention === true ? true : undefined
      }
      for (const k of Object.keys(query) as Array<keyof typeof query>) if (query[k] === undefined) delete query[k]
      const page = await unwrap(api.GET('/v1/videos', { params: { query } }))
      const next = page.next_cursor === null ? '' : `\nnext: ${page.next_cursor}`
      const human = page.data.map(taskLine).join('\n') + next
      printResult(io, json, page, human)
      return EXIT.ok
    }
    case 'events': {
      const id = one(pos, 'task id')
      if (v.follow === true) {
        for await (const e of client.events(id)) {
          printResult(io, json, e, `${e.sequence}\t${e.timestamp}\t${e.type}\t${e.data.status}`)
        }
        return EXIT.ok
      }
      // Without --follow: the events so far, as many as the task's `sequence`, then stop.
      const task = await client.get(id)
      const seen = []
      if (task.sequence > 0) {
        for await (const e of client.events(id)) {
          seen.push(e)
          if (e.sequence >= task.sequence) break
        }
      }
      const human = seen.map(e => `${e.sequence}\t${e.timestamp}\t${e.type}\t${e.data.status}`).join('\n')
      printResult(io, json, seen, human)
      return EXIT.ok
    }
    case 'cancel': {
      const id = one(pos, 'task id')
      const task = await unwrap(api.POST('/v1/videos/{id}/cancel', { params: { path: { id } } }))
      printResult(io, json, task, taskLine(task))
      return EXIT.ok
    }
    case 'download': {
      const out = str(v, 'out')
      if (out === undefined) throw new UsageError('download needs --out')
      const index = int(v, 'index', 0, 9)
      const file = await client.download(one(pos, 'task id'), out, index === undefined ? {} : { index })
      printResult(io, json, file, `${file.path}\t${file.bytes}`)
      return EXIT.ok
    }
    case 'deliveries': {
      if (pos.length > 0) throw new UsageError('deliveries takes no arguments')
      const query = {
        status: v.failed === true ? 'failed' as const : undefined,
        endpoint: str(v, 'endpoint'),
        limit: int(v, 'limit', 1, 100)
      }
      for (const k of Object.keys(query) as Array<keyof typeof query>) if (query[k] === undefined) delete query[k]
      const page = await unwrap(api.GET('/v1/deliveries', { params: { query } }))
      const human = page.data.map(d => [d.id, d.task_id, d.type, d.status, d.attempts.length, d.url].join('\t'))
      printResult(io, json, page, human.join('\n'))
      return EXIT.ok
    }
    case 'retry': {
      const id = one(pos, 'delivery id')
      const d = await unwrap(api.POST('/v1/deliveries/{id}/retry', { params: { path: { id } } }))
      printResult(io, json, d, `${d.id}\t${d.status}`)
      return EXIT.ok
    }
  }
}

/** Runs one command line; returns the exit code (never throws). */
export async function main (argv: string[], io: Io): Promise<number> {
  let json = argv.includes('--json')
  try {
    const { command, values, positionals } = parse(argv)
    json = values.json === true
    if (values.help === true) { io.stdout.write(USAGE + '\n'); return EXIT.ok }
    const url = str(values, 'url') ?? io.env.KLING_GATEWAY_URL
    const key = str(values, 'key') ?? io.env.KLING_GATEWAY_KEY
    if (url === undefined || url === '') throw new UsageError('no gateway URL: --url or KLING_GATEWAY_URL')
    if (key === undefined || key === '') throw new UsageError('no API key: --key or KLING_GATEWAY_KEY')
    if (!/^https?:\/\//.test(url)) throw new UsageError('--url must be an http(s) URL')
    return await run(createGatewayClient({ url, key }), io, command, values, positionals)
  } catch (err) {
    const [code, message, doc] = describe(err)
    if (code === EXIT.usage && message === '') io.stdout.write(USAGE + '\n')
    else io.stderr.write(`kling-gateway: ${message}\n${code === EXIT.usage ? 'see kling-gateway --help\n' : ''}`)
    if (json && doc !== undefined) io.stdout.write(JSON.stringify(doc) + '\n')
    return code
  }
}

/** The exit code, a line for people and, for --json, a document for programs. */
function describe (err: unknown): [number, string, unknown] {
  if (err instanceof UsageError) return [EXIT.usage, err.message, { error: { code: 'USAGE', detail: err.message } }]
  if (err instanceof GatewayProblem) {
    return [err.status >= 500 ? EXIT.unavailable : EXIT.api, `${err.status} ${err.message}`, { error: err.problem }]
  }
  if (err instanceof GatewayUnreachable) {
    return [EXIT.unavailable, err.message, { error: { code: 'UNREACHABLE', detail: err.message } }]
  }
  if (err instanceof GatewayTimeout) {
    return [EXIT.timeout, err.message, { error: { code: 'TIMEOUT', detail: err.message } }]
  }
  const e = err as NodeJS.ErrnoException
  // A file the user named (an image, --out) that cannot be read or written is the command line's fault.
  if (typeof e?.code === 'string' && /^E[A-Z]+$/.test(e.code) && e.path !== undefined) {
    return [EXIT.usage, e.message, { error: { code: 'USAGE', detail: e.message } }]
  }
  if (err instanceof TypeError) return [EXIT.usage, err.message, { error: { code: 'USAGE', detail: err.message } }]
  return [EXIT.unavailable, String((err as Error)?.message ?? err), undefined]
}
