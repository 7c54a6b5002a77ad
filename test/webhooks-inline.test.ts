/**
 * The webhooks' first attempt inline (src/jobs/deliver.ts): the `webhooks` reader stores each delivery and makes its
 * first attempt itself, so a webhook does not wait for a queue; only what needs another attempt becomes a BullMQ job,
 * and at-least-once still holds when the replica dies in the middle of that attempt. Real app, real Redis, real
 * receivers on loopback; the killed replica is a real gateway process (SIGKILL to its process group).
 */
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, inject, it } from 'vitest'
import { Simulator } from '../simulator/app.ts'
import type { DirectoryBlobStore } from '../src/blobs/dir.ts'
import { CLAIM_IDLE_MS } from '../src/events/readers.ts'
import { spawnGroup, waitFor, type GroupProcess } from './helpers/group-process.ts'
import { auth, KEYS, startHarness, type Harness } from './helpers/harness.ts'
import { Receiver } from './helpers/receiver.ts'
import { createTask } from './helpers/tasks.ts'

const root = new URL('..', import.meta.url).pathname
const TSX = join(root, 'node_modules/tsx/dist/loader.mjs')
const SERVER = join(root, 'src/server.ts')
const temp = mkdtempSync(join(tmpdir(), 'kg-wh-inline-'))

interface DeliveryView {
  id: string
  webhook_id: string
  endpoint_id: string | null
  status: string
  next_attempt_at: string | null
  attempts: Array<{ status_code: number | null, error: string | null }>
}

let harnesses: Harness[] = []
let receivers: Receiver[] = []
let sims: Simulator[] = []
let procs: GroupProcess[] = []
afterEach(async () => {
  for (const p of procs) await p.stop(2000)
  for (const r of receivers) await r.close()
  for (const h of harnesses.reverse()) await h.close()
  for (const s of sims) await s.close()
  harnesses = []
  receivers = []
  sims = []
  procs = []
})
afterAll(() => { rmSync(temp, { recursive: true, force: true }) })

async function harness (opts: Parameters<typeof startHarness>[0] = {}): Promise<Harness> {
  const h = await startHarness({ sim: { auto: false }, ...opts })
  harnesses.push(h)
  return h
}

async function receiver (): Promise<Receiver> {
  const r = await Receiver.start()
  receivers.push(r)
  return r
}

async function addEndpoint (h: Harness, url: string): Promise<{ id: string, secret: string }> {
  // Only the first event of a task: the rest (submitted, …) would add deliveries this test does not look at.
  const payload = { url, event_types: ['video.queued'] }
  const res = await h.app.inject({ method: 'POST', url: '/v1/webhook-endpoints', headers: auth('alice'), payload })
  expect(res.statusCode, res.body).toBe(201)
  return res.json()
}

async function deliveries (h: Harness): Promise<DeliveryView[]> {
  const res = await h.app.inject({ url: '/v1/deliveries', headers: auth('alice') })
  expect(res.statusCode, res.body).toBe(200)
  return res.json().data
}

async function deliveryOf (h: Harness, endpointId: string, ok: (d: DeliveryView) => boolean): Promise<DeliveryView> {
  return await waitFor(`the delivery to ${endpointId}`, async () => {
    const d = (await deliveries(h)).find(x => x.endpoint_id === endpointId)
    return d !== undefined && ok(d) ? d : undefined
  }, 10_000, 25)
}

describe('first attempt inline', () => {
  it('delivers without a job; a failed first attempt is queued as a job before it reads retrying, which delivers',
    async () => {
      const h = await harness({
        env: { WEBHOOK_RETRY_SCHEDULE: '0,30ms,30ms', WEBHOOK_TIMEOUT_MS: '2000', RECONCILE_INTERVAL_MS: '600000' }
      })
      // No worker takes a deliver job while the queue is paused: whatever arrives now was sent by the reader itself.
      await h.app.deps.deliveries.queue.pause()
      const good = await receiver()
      const bad = (await receiver()).script({ status: 500 })
      const epGood = await addEndpoint(h, good.url('/hook'))
      const epBad = await addEndpoint(h, bad.url('/hook'))
      await createTask(h)

      expect(await good.waitFor(1)).toHaveLength(1)
      const delivered = await deliveryOf(h, epGood.id, d => d.status === 'succeeded')
      expect(delivered.attempts.map(a => a.status_code)).toEqual([200])
      expect(await h.app.deps.deliveries.queue.getJob(delivered.id)).toBeUndefined()

      expect(await bad.waitFor(1)).toHaveLength(1)
      const failed = await deliveryOf(h, epBad.id, d => d.status === 'retrying')
      expect(failed.attempts.map(a => a.status_code)).toEqual([500])
      expect(failed.next_attempt_at).not.toBeNull()
      const job = await h.app.deps.deliveries.queue.getJob(failed.id)
      expect(job?.data).toEqual({ deliveryId: failed.id, before: 1 })
      // The schedule goes on after the inline attempt: 2 attempts left of 3.
      expect(job?.opts.attempts).toBe(2)
      await new Promise(resolve => setTimeout(resolve, 200))
      expect(bad.requests).toHaveLength(1)

      await h.app.deps.deliveries.queue.resume()
      const both = await bad.waitFor(2)
      expect(both.map(r => r.answer.status)).toEqual([500, 200])
      expect(both[1].headers['webhook-id']).toBe(both[0].headers['webhook-id'])
      const done = await deliveryOf(h, epBad.id, d => d.status === 'succeeded')
      expect(done.attempts.map(a => a.status_code)).toEqual([500, 200])
      expect(good.requests).toHaveLength(1)
    })

  it('hands an attempt slower than the inline wait to a takeover job, moved to the retry time when it fails',
    async () => {
      const h = await harness({ env: { WEBHOOK_TIMEOUT_MS: '3000', RECONCILE_INTERVAL_MS: '600000' } })
      const slow = await receiver()
      const ep = await addEndpoint(h, slow.url('/hook'))
      // Held open past the 1 s the reader waits (within the attempt's own 3 s timeout), then cut.
      slow.script({ status: 200, hang: true })
      await createTask(h)
      await slow.waitFor(1)
      const handed = await waitFor('the takeover job', async () => {
        const d = (await deliveries(h)).find(x => x.endpoint_id === ep.id)
        return d === undefined ? undefined : await h.app.deps.deliveries.queue.getJob(d.id) ?? undefined
      }, 5000, 25)
      expect(handed.data.before).toBe(1)
      // Due after the attempt's own timeout, so it never races a live attempt.
      expect(handed.opts.delay).toBeGreaterThan(2000)
      await slow.close()
      const d = await deliveryOf(h, ep.id, x => x.status === 'retrying')
      expect(d.attempts).toHaveLength(1)
      // The failed attempt moved the takeover to its retry time (the schedule's 5 s ± 10 %): one job, not two.
      const moved = await h.app.deps.deliveries.queue.getJob(d.id)
      expect(moved?.delay).toBeGreaterThanOrEqual(4500)
      expect(moved?.delay).toBeLessThanOrEqual(5500)
      expect(slow.requests).toHaveLength(1)
    })
})

describe('a replica killed in the middle of a first attempt', () => {
  it('leaves the event unacknowledged: another replica claims it and delivers it, with the same webhook-id',
    async () => {
      const sim = new Simulator({ apiKey: KEYS.comet, auto: false })
      await sim.listen()
      sims.push(sim)
      const prefix = `wi${randomBytes(4).toString('hex')}`
      // The API only (no workers): the killed replica is the only one delivering.
      const api = await harness({ simulator: sim, env: { REDIS_PREFIX: prefix }, workers: false, keepKeys: true })
      const r = (await receiver()).script({ status: 200, hang: true })
      const ep = await addEndpoint(api, r.url('/hook'))
      const logPath = join(temp, 'replica.log')
      const replica = spawnGroup('replica', process.execPath, ['--import', TSX, SERVER], {
        logPath,
        cwd: root,
        env: {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          HOME: process.env.HOME ?? '/tmp',
          PORT: '0',
          HOST: '127.0.0.1',
          REDIS_URL: inject('redisUrl'),
          REDIS_PREFIX: prefix,
          COMETAPI_BASE_URL: sim.baseUrl,
          COMETAPI_KEY: KEYS.comet,
          CALLBACK_SECRET: KEYS.callbackSecret,
          API_KEYS: `alice:${KEYS.alice}`,
          PUBLIC_BASE_URL: 'http://127.0.0.1:1',
          CALLBACK_ALLOW_INSECURE: 'true',
          WEBHOOK_ALLOW_PRIVATE: 'true',
          WEBHOOK_TIMEOUT_MS: '10000',
          DATA_DIR: join(temp, 'data'),
          // One deployment: the replicas share the blob directory (a replica on another one refuses to start).
          BLOB_DIR: (api.blobs as DirectoryBlobStore).root,
          LOG_LEVEL: 'warn'
        }
      })
      procs.push(replica)
      await createTask(api)
      // The replica took the event and is in its first attempt (the receiver holds the request): killed now.
      const first = await waitFor('the first attempt', () => {
        if (!replica.alive()) throw new Error(`replica exited: ${readFileSync(logPath, 'utf8').slice(-2000)}`)
        return r.requests[0]
      }, 60_000, 10)
      replica.signal('SIGKILL')
      await replica.exited
      const stored = (await deliveries(api)).find(d => d.endpoint_id === ep.id)
      expect(stored?.status).toBe('pending')
      expect(stored?.attempts).toEqual([])

      const t0 = Date.now()
      const other = await harness({ simulator: sim, env: { REDIS_PREFIX: prefix } })
      const again = await waitFor('the delivery by the other replica', () => r.requests[1], CLAIM_IDLE_MS + 20_000, 50)
      expect(Date.now() - t0).toBeLessThan(CLAIM_IDLE_MS + 20_000)
      expect(again.headers['webhook-id']).toBe(first.headers['webhook-id'])
      expect(again.body).toBe(first.body)
      const done = await deliveryOf(other, ep.id, d => d.status === 'succeeded')
      expect(done.attempts.map(a => a.status_code)).toEqual([200])
    }, CLAIM_IDLE_MS + 60_000)
})
