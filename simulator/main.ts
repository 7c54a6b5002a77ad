/**
 * Runs the simulator on its own: `npm run simulator -- [port=4010] [host=127.0.0.1] [options]`.
 *
 * Options (for fault suites that run it as a process; every one can also be changed later through `/_sim/*`):
 *   --api-key <key>            the only bearer key accepted (any non-empty key when unset)
 *   --processing-after-ms <n>  automatic progress: submitted → processing after n ms (default 200)
 *   --finish-after-ms <n>      … → terminal after n ms (default 600)
 *   --fail-ratio <0..1>        share of tasks that end `failed` (default 0)
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
import { Simulator, type CallbackPolicy, type SimAccount, type SimShapes } from './app.ts'

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
    quiet: { type: 'boolean', default: false }
  }
})

/** A number option, refused loudly when it is not one (a typo must not silently become the default). */
function num (name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  const n = Number(value)
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} must be a non-negative number, got ${value}`)
  return n
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
const port = Number(positionals[0] ?? 4010)
const host = positionals[1] ?? '127.0.0.1'
const sim = new Simulator({
  logger: !values.quiet,
  auto: !values['no-auto'],
  ...(values['api-key'] !== undefined && { apiKey: values['api-key'] }),
  processingAfterMs: num('processing-after-ms', values['processing-after-ms']),
  finishAfterMs: num('finish-after-ms', values['finish-after-ms']),
  failRatio: num('fail-ratio', values['fail-ratio']),
  videoUrlTtlMs: num('video-url-ttl-ms', values['video-url-ttl-ms']),
  shapes: Object.fromEntries(Object.entries(shapes).filter(([, v]) => v !== undefined)),
  account: oneOf<SimAccount>('account', values.account, ['ok', 'balance', 'key'])
})
if (values.callbacks !== undefined) {
  Object.assign(sim.callbackPolicy, JSON.parse(values.callbacks) as Partial<CallbackPolicy>)
}
const url = await sim.listen(port, host)
console.log(`CometAPI simulator on ${url} (control API under ${url}/_sim)`)
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => { sim.close().catch(console.error) })
