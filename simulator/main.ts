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
 *   --quiet                    no request log
 * Prints `CometAPI simulator on <url> …` once listening (port 0 picks a free port; read the URL from that line).
 */
import { parseArgs } from 'node:util'
import { Simulator, type CallbackPolicy } from './app.ts'

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

const port = Number(positionals[0] ?? 4010)
const host = positionals[1] ?? '127.0.0.1'
const sim = new Simulator({
  logger: !values.quiet,
  auto: !values['no-auto'],
  ...(values['api-key'] !== undefined && { apiKey: values['api-key'] }),
  processingAfterMs: num('processing-after-ms', values['processing-after-ms']),
  finishAfterMs: num('finish-after-ms', values['finish-after-ms']),
  failRatio: num('fail-ratio', values['fail-ratio']),
  videoUrlTtlMs: num('video-url-ttl-ms', values['video-url-ttl-ms'])
})
if (values.callbacks !== undefined) {
  Object.assign(sim.callbackPolicy, JSON.parse(values.callbacks) as Partial<CallbackPolicy>)
}
const url = await sim.listen(port, host)
console.log(`CometAPI simulator on ${url} (control API under ${url}/_sim)`)
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => { sim.close().catch(console.error) })
