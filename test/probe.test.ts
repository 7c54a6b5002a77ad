/**
 * The live probe (scripts/probe.ts) run as `npm run probe` would run it, as a process, against the simulator on
 * loopback in place of CometAPI: what costs nothing runs without --yes-spend and nothing is created; with
 * --yes-spend 3 the task checks report lines in the documented format and no more than 3 creates are sent; an
 * answer that contradicts an assumption is reported so; and neither the key nor the callback token is ever printed.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { request } from 'undici'
import { Simulator, type SimFault } from '../simulator/app.ts'
import { CHECKS } from '../scripts/probe/catalog.ts'
import { expiresAt } from '../scripts/probe/results.ts'
import { Scrubber, showUrl } from '../scripts/probe/scrub.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const KEY = `sk-probetest${randomBytes(16).toString('hex')}`
/** README, "Live probe": one line per check. */
const LINE = /^(✔ confirmed|✘ contradicted|\? inconclusive) — ([a-z][a-z-]*): (.+?) — (.+)$/
const FAST = ['--poll-interval', '0.1', '--poll-timeout', '10', '--callback-wait', '0.5', '--timeout', '5']

interface Run { code: number | null, stdout: string, stderr: string }

let sim: Simulator

/** The probe as a child process with only what it needs in its environment, killed if it outlives `timeoutMs`. */
async function probe (args: string[], timeoutMs = 15_000): Promise<Run> {
  const env = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? '/tmp',
    COMETAPI_KEY: KEY,
    COMETAPI_BASE_URL: sim.baseUrl
  }
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/probe.ts', ...args], { cwd: ROOT, env })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
  child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`the probe did not end within ${timeoutMs} ms:\n${stderr}`))
    }, timeoutMs)
    child.once('close', code => { clearTimeout(timer); resolve({ code, stdout, stderr }) })
  })
}

/** The report's check lines, by check id; every line that starts with a verdict must parse. */
function verdicts (stdout: string): Map<string, { verdict: string, evidence: string }> {
  const out = new Map<string, { verdict: string, evidence: string }>()
  for (const line of stdout.split('\n').filter(l => /^(✔|✘|\?) /.test(l))) {
    const m = LINE.exec(line)
    expect(m, `a report line that does not parse: ${line}`).not.toBeNull()
    if (m !== null) out.set(m[2], { verdict: m[1].replace(/^\S+ /, ''), evidence: m[4] })
  }
  return out
}

async function inject (fault: SimFault): Promise<void> {
  const res = await request(`${sim.baseUrl}/_sim/faults`, {
    method: 'POST', body: JSON.stringify(fault), headers: { 'content-type': 'application/json' }
  })
  expect(res.statusCode).toBe(200)
  await res.body.dump()
}

function expectNoSecrets (run: Run, secrets: string[]): void {
  for (const secret of secrets) {
    expect(run.stdout.includes(secret), 'a secret in the report').toBe(false)
    expect(run.stderr.includes(secret), 'a secret in the log').toBe(false)
  }
}

beforeAll(async () => {
  sim = new Simulator({ apiKey: KEY, processingAfterMs: 100, finishAfterMs: 300 })
  await sim.listen()
})
beforeEach(() => { sim.reset() })
afterAll(async () => { await sim.close() })

describe('npm run probe', () => {
  it('runs the checks that cost nothing without --yes-spend, and creates nothing', async () => {
    const run = await probe(FAST)
    expect(run.code, run.stderr).toBe(0)
    expect(run.stderr).toMatch(/refusing to create anything without --yes-spend N; --yes-spend 4 allows all/)
    // The wrong-key create carries `{}`, so the simulator logs it, but nothing with an external id ever left.
    expect(sim.createLog.filter(c => c.externalTaskId !== null)).toEqual([])
    expect(sim.counts.accepted).toBe(0)

    const lines = verdicts(run.stdout)
    expect(lines.size).toBe(18)
    for (const id of ['bad-key', 'not-found-id', 'not-found-external']) expect(lines.get(id)?.verdict).toBe('confirmed')
    expect(lines.get('create')?.verdict).toBe('inconclusive')
    expect(lines.get('create')?.evidence).toMatch(/^not run: .*--yes-spend 0 allows none/)
    expect(lines.get('masks-cfg')?.evidence).toMatch(/^not run: /)
    expect(lines.get('callback-count')?.evidence).toBe('not run: needs --receiver')
    expect(run.stdout).toMatch(/^date: \d{4}-\d\d-\d\dT/m)
    expect(run.stdout).toContain(`base URL host: ${new URL(sim.baseUrl).host}`)
    expect(run.stdout).toMatch(/^probe version: \d+$/m)
    expect(run.stdout).toMatch(/^spend: 0 creates sent \(--yes-spend 0; the checks asked for make at most 4\)$/m)
    expectNoSecrets(run, [KEY])
  })

  it('with --yes-spend 3, reports the task checks and sends no more than 3 creates', async () => {
    const run = await probe([...FAST, '--yes-spend', '3', '--receiver', 'local'])
    const lines = verdicts(run.stdout)
    for (const id of ['create', 'poll', 'timestamps', 'lookup-external', 'duplicate-external', 'download', 'masks-cfg',
      'callback-count', 'callback-body', 'callback-token', 'callback-headers']) {
      expect(lines.get(id)?.verdict, `${id}: ${lines.get(id)?.evidence}`).toBe('confirmed')
    }
    expect(lines.get('duplicate-external')?.evidence).toMatch(/^refused: HTTP 400, Kling envelope \{code: 1201/)
    expect(lines.get('poll')?.evidence).toMatch(/^submitted at .* → processing at .* → succeed at /)
    // The fourth create (other-model) would pass the budget: it is not sent.
    expect(lines.get('other-model')?.evidence).toBe('not run: other-model makes a create, and --yes-spend 3 is used up')
    expect(sim.createLog.filter(c => c.externalTaskId !== null).length).toBeLessThanOrEqual(3)
    // The probe task only: the simulator refuses masks on multi-image2video, as Kling does (masks-cfg confirmed).
    expect(sim.counts.accepted).toBe(1)
    // The simulator never sends a callback twice unless told to: what the probe is there to find out of CometAPI.
    expect(lines.get('callback-retry')?.verdict).toBe('contradicted')
    expect(run.code).toBe(1)
    expect(run.stdout).toMatch(/^spend: 3 creates sent/m)

    const token = [...sim.tasks.values()].map(t => t.callback_url).find(u => u !== null)
    expect(token).toBeDefined()
    const secret = new URL(token as string).searchParams.get('token') as string
    expect(run.stdout).toContain('token=[redacted]')
    expectNoSecrets(run, [KEY, secret])
  })

  it('reports an answer that contradicts an assumption, as JSON, with the key scrubbed from the body', async () => {
    // new-api's flat shape ({code: "<word>"} at the top level) with a code that is not "no such task", echoing the
    // key back. (Its `task_not_exist` is read as "no such task" now.)
    const message = `no task for ${KEY}`
    await inject({ on: 'query', kind: 'kling-error', status: 400, code: 'bad_request_body', message })
    const run = await probe([...FAST, '--only', 'not-found-id', '--json'])
    expect(run.code, run.stderr).toBe(1)
    const doc = JSON.parse(run.stdout) as { probe: { version: string }, results: Array<Record<string, unknown>> }
    expect(doc.results).toHaveLength(1)
    expect(doc.results[0]).toMatchObject({
      check: 'not-found-id',
      verdict: 'contradicted',
      evidence: expect.stringContaining('new-api task error {code: "bad_request_body"}'),
      reliesOn: expect.arrayContaining(['src/upstream/cometapi.ts CometApiAdapter.isNotFound'])
    })
    expect(String(doc.results[0].evidence)).toMatch(/the adapter reads COMET_bad_request_body \(final\)/)
    expect(run.stdout).toContain('no task for [redacted]')
    expectNoSecrets(run, [KEY])
  })

  it('reads a 429 and its Retry-After, and stops the burst there', async () => {
    await inject({ on: 'query', kind: 'rate-limit', retryAfter: 7 })
    const run = await probe([...FAST, '--only', 'rate-limit'])
    expect(run.code, run.stderr).toBe(0)
    const line = verdicts(run.stdout).get('rate-limit')
    expect(line?.verdict).toBe('confirmed')
    expect(line?.evidence).toMatch(/Retry-After 7, .*the adapter reads UPSTREAM_RATE_LIMITED \(retried, waits 7000 ms/)
    // The first answer is the 429; only the few queries already in flight beside it were sent.
    expect(sim.counts.queries).toBeLessThanOrEqual(5)
  })

  it('names, for every assumption, the code that relies on it, in words a report line can carry', () => {
    for (const check of CHECKS) {
      expect(check.assumption, check.id).not.toContain(' — ')
      expect(check.reliesOn.length, check.id).toBeGreaterThan(0)
      for (const where of check.reliesOn) expect(where, check.id).toMatch(/^(src|simulator)\/[\w/.-]+\.ts( |$)/)
    }
  })

  it('reads when a signed result URL expires, and shows it without its signature', () => {
    const oss = 'https://cdn.example.com/v/1.mp4?Expires=1800000000&OSSAccessKeyId=LTAI5tExample&Signature=ab%2Bcd'
    expect(expiresAt(oss)).toEqual({ at: 1800000000_000, from: 'Expires=1800000000 (Unix seconds)' })
    expect(showUrl(oss)).toBe('https://cdn.example.com/v/1.mp4?Expires=1800000000&OSSAccessKeyId=[redacted]' +
      '&Signature=[redacted]')
    const s3 = 'https://b.s3.amazonaws.com/1.mp4?X-Amz-Date=20261201T000000Z&X-Amz-Expires=604800&X-Amz-Signature=f00'
    expect(expiresAt(s3)?.at).toBe(Date.UTC(2026, 11, 1) + 604800_000)
    expect(expiresAt('https://cdn.example.com/v/1.mp4')).toBeNull()
  })

  it('scrubs a secret as given, URL-encoded, as a bearer value and as a key-looking string', () => {
    const scrubber = new Scrubber()
    scrubber.add('s3cr+t/value')
    const text = 'a s3cr+t/value b s3cr%2Bt%2Fvalue c Bearer abcdefghijkl d sk-abcdefghijklmnop e ?token=t0k.abcdefgh'
    expect(scrubber.scrub(text)).toBe('a [redacted] b [redacted] c Bearer [redacted] d sk-[redacted] e ' +
      '?token=[redacted]')
  })

  it('refuses a check it does not know, before sending anything', async () => {
    const run = await probe(['--only', 'create,no-such-check'])
    expect(run.code).toBe(2)
    expect(run.stderr).toContain('no such check or group: no-such-check')
    expect(sim.counts.queries + sim.counts.creates).toBe(0)
  })
})
