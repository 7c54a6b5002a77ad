/**
 * Runs the simulator on its own: `npm run simulator -- [port] [host=127.0.0.1] [options]`; the port is the
 * argument, else SIMULATOR_PORT, else 4010. The pace is the demo's (~20 s to done) unless flags or the
 * SIMULATOR_PROCESSING_AFTER_MS / SIMULATOR_FINISH_AFTER_MS / SIMULATOR_FAIL_RATIO variables say otherwise.
 *
 * Options (for fault suites that run it as a process; every one can also be changed later through `/_sim/*`):
 *   --api-key <key>            the only bearer key accepted (any non-empty key when unset)
 *   --processing-after-ms <n>  automatic progress: submitted → processing after n ms (default 3000)
 *   --finish-after-ms <n>      … → terminal after n ms (default 20000)
 *   --fail-ratio <0..1>        share of tasks that end `failed` (default 0)
 *   --open-control             the control API from any peer (default: loopback only; a container needs it)
 *   --video-url-ttl-ms <n>     URLs that expire: result URLs carry x-expires (last update + n) and answer 403 past it
 *   --no-auto                  no automatic progress
 *   --callbacks <json>         initial callback policy, e.g. '{"duplicate":2,"reorder":true,"dropRatio":0.2}'
 *   --create-shape <kling|openai>  how an accepted create answers (openai: `{id, task_id, object: "video", …}`)
 *   --alias-ids                the create answers with a gateway alias id; queries and callbacks carry Kling's
 *   --numeric-ids              task ids as bare JSON numbers
 *   --timestamps <ms|s>        Unix milliseconds (Kling's) or seconds
 *   --errors <comet|new-api>   error bodies: CometAPI's `{error: {…}}`, or new-api's flat `{code: "<word>"}`
 *   --no-external-lookup       a query by external id answers 404 (unsupported)
 *   --account <ok|balance|key> start with an empty wallet (creates refused) or a revoked key (everything refused)
 *   --quiet                    no request log
 * Prints `CometAPI simulator on <url> …` once listening (port 0 picks a free port; read the URL from that line).
 */
import { parseArgs } from 'node:util'
import { DEMO_PACE, Simulator, type CallbackPolicy, type SimAccount, type SimShapes } from './app.ts'

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'api-key': { type: 'string' },
    'processing-after-ms': { type: 'string' },
    'finish-after-ms': { type: 'string' },
    'fail-ratio': { type: 'string' },
    'video-url-ttl-ms': { type: 'string' },
    'no-auto': { type: 'boolean', default: false },
    callbacks: { type: 'string' },
    'create-shape': { type: 'string' },
    'alias-ids': { type: 'boolean', default: false },
    'numeric-ids': { type: 'boolean', default: false },
    timestamps: { type: 'string' },
    errors: { type: 'string' },
    'no-external-lookup': { type: 'boolean', default: false },
    account: { type: 'string' },
    quiet: { type: 'boolean', default: false },
    'open-control': { type: 'boolean', default: false }
  }
})

/** A number option, refused loudly when it is not one (a typo must not silently become the default). */
function num (name: string, value: string | undefined): number | undefined {
  if (value === undefined || value === '') return undefined
  const n = Number(value)
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got ${value}`)
  return n
}

/** A flag, else its variable (docs/API.md, "Configuration"), else `fallback`. */
function paced (flag: 'processing-after-ms' | 'finish-after-ms' | 'fail-ratio', variable: string, fallback?: number):
number | undefined {
  return num(`--${flag}`, values[flag]) ?? num(variable, process.env[variable]) ?? fallback
}

/** A choice option, refused loudly when it is not one of `allowed`. */
function oneOf<T extends string> (name: string, value: string | undefined, allowed: readonly T[]): T | undefined {
  if (value === undefined) return undefined
  if (!(allowed as readonly string[]).includes(value)) throw new Error(`--${name} must be one of ${allowed.join(', ')}`)
  return value as T
}

const shapes: Partial<SimShapes> = {
  create: oneOf('create-shape', values['create-shape'], ['kling', 'openai'] as const),
  timestamps: oneOf('timestamps', values.timestamps, ['ms', 's'] as const),
  errors: oneOf('errors', values.errors, ['comet', 'new-api'] as const),
  ...(values['alias-ids'] && { aliasIds: true }),
  ...(values['numeric-ids'] && { numericIds: true }),
  ...(values['no-external-lookup'] && { externalLookup: false })
}
const port = num('port', positionals[0]) ?? num('SIMULATOR_PORT', process.env.SIMULATOR_PORT) ?? 4010
const host = positionals[1] ?? '127.0.0.1'
const sim = new Simulator({
  logger: !values.quiet,
  auto: !values['no-auto'],
  ...(values['api-key'] !== undefined && { apiKey: values['api-key'] }),
  processingAfterMs: paced('processing-after-ms', 'SIMULATOR_PROCESSING_AFTER_MS', DEMO_PACE.processingAfterMs),
  finishAfterMs: paced('finish-after-ms', 'SIMULATOR_FINISH_AFTER_MS', DEMO_PACE.finishAfterMs),
  failRatio: paced('fail-ratio', 'SIMULATOR_FAIL_RATIO'),
  videoUrlTtlMs: num('--video-url-ttl-ms', values['video-url-ttl-ms']),
  openControl: values['open-control'],
  shapes: Object.fromEntries(Object.entries(shapes).filter(([, v]) => v !== undefined)),
  account: oneOf<SimAccount>('account', values.account, ['ok', 'balance', 'key'])
})
if (values.callbacks !== undefined) {
  Object.assign(sim.callbackPolicy, JSON.parse(values.callbacks) as Partial<CallbackPolicy>)
}
const url = await sim.listen(port, host)
const { processingAfterMs, finishAfterMs } = sim.opts
// Fault suites read the URL from this line's start; the rest is for people.
console.log(`CometAPI simulator on ${url} (control API under ${url}/_sim, routes in README "Simulator"; ` +
  `tasks: processing after ${processingAfterMs} ms, done after ${finishAfterMs} ms)`)
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => { sim.close().catch(console.error) })
