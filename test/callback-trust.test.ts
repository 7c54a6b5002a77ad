/**
 * What a callback token is worth (issue 13): an unconfirmed callback moves the status but brings no free text of
 * its own; tokens carry a key id and an expiry, so CALLBACK_SECRET rotates with tasks in flight; only the exact
 * spelling we mint is accepted; a token never reaches a log however its query is spelled. Real app, redis-server,
 * the simulator and a webhook receiver over loopback HTTP.
 */
import { createHmac, randomBytes } from 'node:crypto'
import { afterEach, describe, expect, it } from 'vitest'
import { Simulator } from '../simulator/app.ts'
import {
  callbackKeyId, callbackKeys, callbackToken, checkCallbackToken, verifyCallbackToken
} from '../src/domain/callback-token.ts'
import { type Harness, harnessPerTest, KEYS, startHarness } from './helpers/harness.ts'
import { Receiver } from './helpers/receiver.ts'
import { createTask, getTask, waitFor } from './helpers/tasks.ts'

const harness = harnessPerTest()
const cleanups: Array<() => Promise<void>> = []
afterEach(async () => { for (const c of cleanups.splice(0).reverse()) await c() })

const ENV = { WEBHOOK_ALLOW_PRIVATE: 'true', RECONCILE_INTERVAL_MS: '600000' }
const DAY = 24 * 3600_000
const HOSTILE = 'URGENT: your video was flagged, log in at https://evil.example/login'
const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

/** A submitted task and the token of the callback_url the gateway really sent upstream. */
async function submitted (h: Harness, over: Record<string, unknown> = {}) {
  const created = await createTask(h, over)
  const task = await waitFor(h, created.id, t => t.status === 'submitted')
  expect(task.status).toBe('submitted')
  const upstreamId = task.upstream?.task_id as string
  const sent = new URL(h.sim.tasks.get(upstreamId)?.callback_url ?? '')
  return { id: created.id, upstreamId, token: sent.searchParams.get('token') ?? '' }
}

const post = async (h: Harness, query: string, payload: Record<string, unknown>) =>
  await h.app.inject({ method: 'POST', url: `/callbacks/kling?${query}`, payload })

const processing = (upstreamId: string, msg: string) =>
  ({ task_id: upstreamId, task_status: 'processing', task_status_msg: msg, updated_at: Date.now() })

async function queriesAbove (h: Harness, n: number): Promise<void> {
  for (let i = 0; i < 300 && h.sim.counts.queries <= n; i++) await sleep(10)
  expect(h.sim.counts.queries).toBeGreaterThan(n)
}

describe('callback free text', () => {
  it('moves the status on an unconfirmed callback but takes its message only from the confirming query',
    async () => {
      const h = await harness({ sim: { auto: false }, env: ENV })
      const r = await Receiver.start()
      cleanups.push(async () => await r.close())
      const { id, upstreamId, token } = await submitted(h, { webhook_url: r.url('/task') })
      h.sim.setStatus(upstreamId, 'processing', 'rendering 40%')

      // The first confirming query finds nothing: the callback's status stands, its text does not.
      h.sim.inject({ on: 'query', kind: 'not-found' })
      const queries = h.sim.counts.queries
      const res = await post(h, `token=${token}`, processing(upstreamId, HOSTILE))
      expect(res.statusCode).toBe(200)
      expect(res.json()).toEqual({ outcome: 'applied', status: 'processing' })
      await queriesAbove(h, queries)
      const moved = await getTask(h, id)
      expect(moved.status).toBe('processing')
      expect(moved.upstream?.status_msg).toBeNull()

      const hooks = await r.waitFor(3, { path: '/task' })
      const hook = hooks.map(x => JSON.parse(x.body)).find(b => b.type === 'video.processing')
      expect(hook.data.upstream.status_msg).toBeNull()

      // The next callback's query answers: upstream's own message is the task's, with no event of its own.
      const again = h.sim.counts.queries
      expect((await post(h, `token=${token}`, processing(upstreamId, HOSTILE))).json().outcome).toBe('duplicate')
      await queriesAbove(h, again)
      const confirmed = await waitFor(h, id, t => t.upstream?.status_msg === 'rendering 40%')
      expect(confirmed.upstream?.status_msg).toBe('rendering 40%')
      expect(confirmed.sequence).toBe(moved.sequence)

      // A callback repeating what upstream confirmed costs no query.
      const settled = h.sim.counts.queries
      await post(h, `token=${token}`, processing(upstreamId, 'rendering 40%'))
      await sleep(100)
      expect(h.sim.counts.queries).toBe(settled)

      const events = await h.app.deps.store.events(id)
      for (const text of [JSON.stringify(events), JSON.stringify(await getTask(h, id)), ...hooks.map(x => x.body)]) {
        expect(text).not.toContain('evil.example')
      }
    })
})

describe('callback messages upstream words otherwise', () => {
  it('costs one confirming query for a repeated message, not one per repeat', async () => {
    const h = await harness({ sim: { auto: false }, env: ENV })
    const { upstreamId, token } = await submitted(h)
    h.sim.setStatus(upstreamId, 'processing', 'rendering 40%')
    const before = h.sim.counts.queries
    expect((await post(h, `token=${token}`, processing(upstreamId, 'Rendering, 40 percent'))).statusCode).toBe(200)
    await queriesAbove(h, before)
    // The query ran (and answered with its own wording); CometAPI repeats the callback: nothing more is asked.
    for (let i = 0; i < 5; i++) {
      expect((await post(h, `token=${token}`, processing(upstreamId, 'Rendering, 40 percent'))).statusCode).toBe(200)
      await sleep(300) // long enough for a query a repeat queued to run
    }
    expect(h.sim.counts.queries).toBe(before + 1)
  })
})

describe('callback tokens: key ids, rotation, expiry', () => {
  it('mints v2.<kid>.<exp>.<task id>.<mac>, expiring a day after twice the task deadline', async () => {
    const h = await harness({ sim: { auto: false }, env: { ...ENV, TASK_DEADLINE_MS: '7200000' } })
    const before = Date.now()
    const { id, token } = await submitted(h)
    const [version, kid, exp, taskId, mac] = token.split('.')
    expect([version, kid, taskId]).toEqual(['v2', callbackKeyId(KEYS.callbackSecret), id])
    expect(kid).toMatch(/^[0-9a-f]{8}$/)
    expect(mac).toMatch(/^[\w-]{43}$/)
    const expMs = Number(exp) * 1000
    expect(expMs).toBeGreaterThanOrEqual(before + 4 * 3600_000 + DAY)
    expect(expMs).toBeLessThan(Date.now() + 4 * 3600_000 + DAY + 1000)
    expect(h.logs.text).not.toContain(mac)
  })

  it('accepts a task\'s callback after CALLBACK_SECRET rotated while the old secret is listed', async () => {
    const sim = new Simulator({ apiKey: KEYS.comet, auto: false })
    await sim.listen()
    cleanups.push(async () => await sim.close())
    // The replica before the rotation, closed by hand (its keys kept): the one after takes over its prefix.
    const before = await startHarness({ simulator: sim, keepKeys: true, env: ENV })
    const { id, upstreamId, token } = await submitted(before)
    await before.close()

    const next = randomBytes(32).toString('hex')
    const rotated = { CALLBACK_SECRET: next, CALLBACK_SECRETS_PREVIOUS: KEYS.callbackSecret }
    const env = { ...ENV, REDIS_PREFIX: before.prefix, ...rotated }
    const after = await harness({ simulator: sim, env })
    expect(after.app.deps.config.callbackSecretsPrevious).toEqual([KEYS.callbackSecret])
    const res = await post(after, `token=${token}`, processing(upstreamId, ''))
    expect(res.statusCode).toBe(200)
    expect(res.json().outcome).toBe('applied')
    expect((await getTask(after, id)).status).toBe('processing')

    // New tokens are signed by the new secret only; one under a secret nobody lists is a wrong token.
    const now = Date.now()
    const fresh = callbackToken(callbackKeys(after.app.deps.config), id, now + DAY)
    expect(fresh.split('.')[1]).toBe(callbackKeyId(next))
    expect(checkCallbackToken({ current: next, previous: [] }, token, now))
      .toEqual({ ok: false, reason: 'unknown-key' })
    const stranger = callbackToken(randomBytes(32).toString('hex'), id, now + DAY)
    const wrongMac = `${fresh.slice(0, -2)}${fresh.endsWith('AA') ? 'Bw' : 'AA'}`
    const mixed = `v2.${callbackKeyId(next)}.${fresh.split('.')[2]}.${id}.${stranger.split('.')[4]}`
    for (const t of [stranger, wrongMac, mixed]) {
      const bad = await post(after, `token=${t}`, processing(upstreamId, ''))
      expect(bad.statusCode, t).toBe(404)
      expect(bad.json().detail).toBe('callback target not found')
    }
  })

  it('answers 404 once a token has expired, and says so in a log line without the token', async () => {
    let offset = 0
    const env = { ...ENV, TASK_DEADLINE_MS: '1000' }
    const h = await harness({ sim: { auto: false }, env, clock: () => Date.now() + offset })
    const { id, upstreamId, token } = await submitted(h)
    const exp = Number(token.split('.')[2]) * 1000
    offset = exp - Date.now() + 1000
    const res = await post(h, `token=${token}`, processing(upstreamId, ''))
    expect(res.statusCode).toBe(404)
    expect(res.json().detail).toBe('callback target not found')
    expect((await getTask(h, id)).status).toBe('submitted')
    expect(h.logs.text).toContain('callback with an expired token')
    expect(h.logs.text).not.toContain(token.split('.')[4])
  })
})

describe('callback tokens: the verified-token memo', () => {
  it('stops accepting a remembered token once its secret is dropped, and still ends it at its expiry', () => {
    const old = randomBytes(32).toString('hex')
    const next = randomBytes(32).toString('hex')
    const now = Date.now()
    const token = callbackToken(old, 'task_memo', now + DAY)
    const both = { current: next, previous: [old] }
    // Verified once (and so remembered), then asked again: the same answer each time while the secret is held.
    for (let i = 0; i < 2; i++) expect(checkCallbackToken(both, token, now)).toEqual({ ok: true, taskId: 'task_memo' })
    // The old secret leaves CALLBACK_SECRETS_PREVIOUS: the remembered token no longer counts.
    const dropped = { current: next, previous: [] }
    expect(checkCallbackToken(dropped, token, now)).toEqual({ ok: false, reason: 'unknown-key' })
    // Expiry is in whole seconds, rounded up.
    expect(checkCallbackToken(both, token, now + DAY + 1000)).toEqual({ ok: false, reason: 'expired' })
    // A wrong MAC is never remembered as right, however often it is tried after the right one.
    const wrong = `${token.slice(0, -2)}${token.endsWith('AA') ? 'Bw' : 'AA'}`
    for (let i = 0; i < 2; i++) expect(checkCallbackToken(both, wrong, now)).toEqual({ ok: false, reason: 'wrong' })
  })
})

describe('callback tokens: only the canonical spelling', () => {
  /** A token of ours for `id` whose MAC has a `-` or `_` in it (so it has a base64 `+`/`/` twin). */
  function withUrlChars (h: Harness, id: string): string {
    for (let i = 0; i < 200; i++) {
      const t = callbackToken(callbackKeys(h.config), id, Date.now() + DAY + i * 1000)
      if (/[-_]/.test(t.split('.')[4])) return t
    }
    throw new Error('no MAC with - or _ in 200 tries')
  }

  it('rejects padding, the base64 alphabet, unused bits, case changes and extra characters', async () => {
    const h = await harness({ sim: { auto: false }, env: ENV })
    const { id, upstreamId, token } = await submitted(h)
    const good = withUrlChars(h, id)
    const mac = good.split('.')[4]
    const head = good.slice(0, -mac.length)
    // The last character carries 4 bits and 2 unused ones: its neighbour decodes to the same bytes.
    const last = 'AEIMQUYcgkosw048'.indexOf(mac.at(-1) ?? '')
    const twin = 'BFJNRVZdhlptx159'[last]
    const [, kid, exp] = good.split('.')
    const variants = [
      `${good}=`, `${head}${mac.replace(/-/g, '+').replace(/_/g, '/')}`, `${good.slice(0, -1)}${twin}`,
      `${good} `, ` ${good}`, `${good}.`, `${good}A`, good.replace(kid, kid.toUpperCase()),
      good.replace(`.${exp}.`, `.0${exp}.`), good.replace('v2.', 'V2.'), `${good.slice(0, 20)}\n${good.slice(20)}`
    ]
    // Legacy `<task id>.<mac>` tokens (minted before key ids) verify, in their exact spelling only.
    const v1 = `${id}.${createHmac('sha256', KEYS.callbackSecret).update(id).digest('base64url')}`
    variants.push(`${v1}=`, `${v1.slice(0, -1)}${'BFJNRVZdhlptx159'['AEIMQUYcgkosw048'.indexOf(v1.at(-1) ?? '')]}`)
    for (const t of variants) {
      expect(verifyCallbackToken(callbackKeys(h.config), t), JSON.stringify(t)).toBeNull()
      const res = await post(h, `token=${encodeURIComponent(t)}`, processing(upstreamId, ''))
      expect(res.statusCode, JSON.stringify(t)).toBe(404)
    }
    expect((await getTask(h, id)).status).toBe('submitted')
    for (const t of [good, v1, token]) {
      const res = await post(h, `token=${encodeURIComponent(t)}`, processing(upstreamId, ''))
      expect(res.statusCode, t).toBe(200)
    }
    expect((await getTask(h, id)).status).toBe('processing')
  })
})

describe('callback tokens in logs', () => {
  it('redacts the token however the query spells its name or value', async () => {
    const h = await harness({ sim: { auto: false }, env: ENV })
    const { upstreamId, token } = await submitted(h)
    const mac = token.split('.')[4]
    const spelled = [...token].map(c => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join('')
    const queries = [
      `%74oken=${token}`, `T%4Fken=${token}`, `token=${spelled}`, `%2574oken=${token}`, `x=1&%74oken=${token}`,
      `x=%26token%3D${token}`
    ]
    for (const q of queries) await post(h, q, processing(upstreamId, ''))
    // The decoded `%74oken` is the route's `token`: the callback is taken, and still never logged.
    const ok = await post(h, `%74oken=${token}`, processing(upstreamId, ''))
    expect(ok.statusCode).toBe(200)
    // Unknown routes log their URL too.
    await h.app.inject({ method: 'POST', url: `/callbacks/klingx?%74oken=${token}`, payload: {} })
    expect(h.logs.text).toContain('%74oken=[REDACTED]')
    expect(h.logs.text).toContain('/callbacks/klingx?%74oken=[REDACTED]')
    expect(h.logs.text).not.toContain(mac)
    expect(h.logs.text).not.toContain(spelled.slice(-30))
  })
})
