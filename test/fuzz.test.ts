/**
 * Fuzzing every operation of openapi/openapi.json (GitHub issue 13, item 10) against the real app, the run's real
 * redis-server and the simulator: FUZZ_RUNS generated requests per operation (60 in `npm test`, 2,000 in
 * `npm run fuzz`), each within FUZZ_BUDGET_MS per operation. In a healthy harness no request may get a 5xx, every
 * 4xx is a problem+json of the Problem shape, no response carries a secret, every response matches the document
 * (test/helpers/contract.ts), and nothing is added to Object.prototype. A failure prints fast-check's seed and
 * path; FUZZ_SEED=<seed> replays it.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import fc from 'fast-check'
import type { LightMyRequestResponse } from 'fastify'
import { assertNoSecrets, auth, KEYS, startHarness, type Harness } from './helpers/harness.ts'
import { contractRecord, readDocument } from './helpers/contract.ts'
import { describeRequest, operations, requestArb, type FuzzRequest, type Pools } from './helpers/fuzz.ts'
import { callbackToken, callbackTokenExpiry } from '../src/domain/callback-token.ts'
import { validBody } from './helpers/tasks.ts'

const RUNS = Number(process.env.FUZZ_RUNS ?? 60)
/** Per operation; an operation that cannot get through its runs in time fails (it is not silently cut short). */
const BUDGET_MS = Number(process.env.FUZZ_BUDGET_MS ?? Math.max(30_000, RUNS * 60))
const SEED = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED)
/** One request that gets no answer in this long is a failure of its own (a hung route, not a slow one). */
const ANSWER_MS = 10_000

const doc = readDocument()
const OPS = operations(doc)

interface Problem { type: string, title: string, status: number, detail: string, code: string }

function isProblem (body: unknown, status: number): body is Problem {
  const p = body as Problem
  return p !== null && typeof p === 'object' && typeof p.type === 'string' && typeof p.title === 'string' &&
    p.status === status && typeof p.detail === 'string' && typeof p.code === 'string' && !p.code.startsWith('FST_')
}

describe('fuzzing every operation', () => {
  let h: Harness
  let secrets: string[]
  let pools: Pools
  const protoBefore = Object.getOwnPropertyNames(Object.prototype).sort()

  beforeAll(async () => {
    // Workers off: no submission races the fuzzer, and the tasks it makes stay queued (cheap to make thousands).
    h = await startHarness({ workers: false })
    const inject = async (method: 'POST' | 'GET', url: string, who: 'alice' | 'bob', payload?: object) => {
      const res = await h.app.inject({ method, url, headers: auth(who), ...(payload !== undefined && { payload }) })
      expect(res.statusCode, res.body).toBeLessThan(300)
      return res.json()
    }
    const queued = await inject('POST', '/v1/videos', 'alice', validBody())
    const canceled = await inject('POST', '/v1/videos', 'alice', validBody())
    await inject('POST', `/v1/videos/${canceled.id as string}/cancel`, 'alice')
    const bobs = await inject('POST', '/v1/videos', 'bob', validBody())
    const endpoint = await inject('POST', '/v1/webhook-endpoints', 'alice', { url: 'http://127.0.0.1:9/hook' })
    // The tokens as submit mints them (their expiry is fixed by the task's creation).
    const tokens = [queued, canceled, bobs].map(t => callbackToken(KEYS.callbackSecret, t.id as string,
      callbackTokenExpiry(Date.parse(t.created_at as string), h.config.reconcile.deadlineMs)))
    // A valid callback token names one task: only CometAPI may hold it, so no response may echo it.
    secrets = [...tokens, endpoint.secret as string]
    const tasks = [queued.id, canceled.id, bobs.id] as string[]
    pools = {
      ids: path => {
        if (path.startsWith('/v1/webhook-endpoints')) return [endpoint.id as string]
        // An open event stream never ends on its own (inject would wait for ever): only settled tasks there.
        if (path.endsWith('/events')) return [canceled.id as string]
        if (path.startsWith('/v1/videos')) return tasks
        return []
      },
      auth: [auth('alice'), auth('bob'), auth('ops')].map(a => a.authorization),
      query: { token: tokens, cursor: ['0:x', '1:' + (queued.id as string)] }
    }
  })
  afterAll(async () => { await h?.close() })

  async function send (r: FuzzRequest): Promise<LightMyRequestResponse> {
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => { reject(new Error(`no answer in ${ANSWER_MS} ms`)) }, ANSWER_MS)
    })
    try {
      return await Promise.race([h.app.inject({
        method: r.method as 'GET',
        url: r.url,
        headers: r.headers,
        ...(r.payload !== undefined && { payload: r.payload })
      }), late])
    } finally {
      clearTimeout(timer)
    }
  }

  /** Why this answer is wrong, or null. */
  function judge (res: LightMyRequestResponse, mismatchesBefore: number): string | null {
    if (res.statusCode >= 500) return `a ${res.statusCode}: ${res.body.slice(0, 300)}`
    const type = String(res.headers['content-type'] ?? '')
    if (res.statusCode >= 400) {
      if (!type.startsWith('application/problem+json')) return `a ${res.statusCode} as ${type || 'no content type'}`
      let body: unknown
      try { body = JSON.parse(res.body) } catch { return `a ${res.statusCode} whose body is not JSON` }
      if (!isProblem(body, res.statusCode)) return `a ${res.statusCode} not a Problem: ${res.body.slice(0, 300)}`
    }
    const text = res.body + JSON.stringify(res.headers)
    try {
      assertNoSecrets(text)
    } catch (err) {
      return (err as Error).message.replace('a log line', 'a response')
    }
    if (secrets.some(s => text.includes(s))) return 'a callback token or webhook secret reached a response'
    const mismatches = contractRecord(h.app).mismatches
    if (mismatches.length > mismatchesBefore) return `not as the document says: ${mismatches.at(-1) as string}`
    const proto = Object.getOwnPropertyNames(Object.prototype).sort()
    if (proto.join() !== protoBefore.join()) return 'Object.prototype was changed'
    return null
  }

  for (const operation of OPS) {
    it(`${operation.id} (${operation.method} ${operation.path}): ${RUNS} requests, no 5xx, only problems, ` +
      'no secret, as documented', async () => {
      const seen = new Map<number, number>()
      let sent = 0
      await fc.assert(fc.asyncProperty(requestArb(doc, operation, pools), async r => {
        const before = contractRecord(h.app).mismatches.length
        const res = await send(r)
        sent++
        seen.set(res.statusCode, (seen.get(res.statusCode) ?? 0) + 1)
        const wrong = judge(res, before)
        // The message names the request (keys cut) so a failure can be replayed by hand as well as by seed.
        if (wrong !== null) throw new Error(`${wrong}\n  request: ${describeRequest(r)}`)
      }), {
        numRuns: RUNS,
        // fast-check's own report prints the counterexample whole, API keys included: this one names the request
        // with its keys cut (describeRequest) and says how to replay it.
        reporter: details => {
          if (!details.failed) return
          const why = details.interrupted
            ? `not done in FUZZ_BUDGET_MS=${BUDGET_MS} ms`
            : (details.errorInstance as Error | undefined)?.message ?? 'failed'
          throw new Error(`${operation.id}: ${why}\n  after ${details.numRuns} runs; FUZZ_SEED=${details.seed} ` +
            `replays the run (path ${details.counterexamplePath ?? '-'})`)
        },
        interruptAfterTimeLimit: BUDGET_MS,
        markInterruptAsFailure: true,
        ...(SEED !== undefined && { seed: SEED })
      })
      expect(sent).toBeGreaterThanOrEqual(RUNS)
      if (process.env.FUZZ_VERBOSE !== undefined) {
        console.log(operation.id, JSON.stringify(Object.fromEntries([...seen].sort(([a], [b]) => a - b))))
      }
      // The generator must reach the operation's own code (a 2xx, or its 404/409), not only the refusals of
      // auth, schema and body parsing.
      const statuses = [...seen.keys()]
      if (operation.op.security !== undefined) expect(statuses).toContain(401)
      expect(statuses.some(s => ![400, 401, 413, 414, 415].includes(s)), `only ${statuses.join(', ')}`).toBe(true)
    }, BUDGET_MS + 30_000)
  }

  it('fuzzes every operation of the document', () => {
    expect(OPS.length).toBeGreaterThanOrEqual(20)
    // Most requests reach a route (some URLs, e.g. an empty id, reach none and get the 404 of no route).
    expect(contractRecord(h.app).checked).toBeGreaterThan(OPS.length * RUNS / 2)
  })
})
