/**
 * What a browser needs (docs/API.md, "Browsers"): CORS only for CORS_ORIGINS (off by default), and signed links
 * that open a task's content and events without an Authorization header, for that task only, until they expire,
 * never in a log line. Real app on loopback, real Redis, the simulator finishing the task.
 */
import { describe, it, expect } from 'vitest'
import { Simulator } from '../simulator/app.ts'
import { auth, harnessPerTest, type Harness } from './helpers/harness.ts'
import { createTask, waitFor } from './helpers/tasks.ts'
import { readSse } from './helpers/sse.ts'

interface Links { content_url: string, events_url: string, expires_at: string }

const start = harnessPerTest()
const ENV = { RECONCILE_INTERVAL_MS: '600000', MIRROR_RETRY_BASE_MS: '10', MIRROR_RETRY_MAX_MS: '40' }

async function links (h: Harness, id: string, who: 'alice' | 'bob' = 'alice') {
  return await h.app.inject({ method: 'POST', url: `/v1/videos/${id}/links`, headers: auth(who) })
}

/** The path and query of an absolute link, for inject. */
const local = (url: string) => { const u = new URL(url); return `${u.pathname}${u.search}` }

async function storedTask (h: Harness): Promise<{ id: string, upstreamId: string }> {
  const task = await createTask(h)
  const done = await waitFor(h, task.id, t => t.status === 'succeeded', 10_000)
  for (let i = 0; i < 400; i++) {
    if ((await h.app.deps.store.events(task.id)).some(e => e.type === 'video.stored')) break
    await new Promise(resolve => setTimeout(resolve, 25))
  }
  return { id: task.id, upstreamId: done.upstream?.task_id as string }
}

describe('CORS', () => {
  const preflight = async (h: Harness, origin: string) => await h.app.inject({
    method: 'OPTIONS',
    url: '/v1/videos',
    headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization' }
  })

  it('is off by default: no CORS header on a preflight or an answer', async () => {
    const h = await start({ env: ENV })
    const res = await preflight(h, 'https://app.example.com')
    expect(res.headers['access-control-allow-origin']).toBeUndefined()
    const get = await h.app.inject({ url: '/v1/videos', headers: { ...auth('alice'), origin: 'https://app.example.com' } })
    expect(get.statusCode).toBe(200)
    expect(get.headers['access-control-allow-origin']).toBeUndefined()
  })

  it('allows the listed origins only, and exposes the headers a script must read', async () => {
    const h = await start({ env: { ...ENV, CORS_ORIGINS: 'https://app.example.com, https://ops.example.com' } })
    const ok = await preflight(h, 'https://app.example.com')
    expect(ok.statusCode).toBe(204)
    expect(ok.headers['access-control-allow-origin']).toBe('https://app.example.com')
    expect(String(ok.headers['access-control-allow-headers'])).toContain('authorization')
    expect(ok.headers['access-control-allow-credentials']).toBeUndefined()

    const other = await preflight(h, 'https://evil.example.com')
    expect(other.headers['access-control-allow-origin']).toBeUndefined()

    const get = await h.app.inject({ url: '/v1/videos', headers: { ...auth('alice'), origin: 'https://ops.example.com' } })
    expect(get.headers['access-control-allow-origin']).toBe('https://ops.example.com')
    const exposed = String(get.headers['access-control-expose-headers']).split(',').map(s => s.trim())
    expect(exposed).toEqual(expect.arrayContaining(['retry-after', 'location', 'idempotent-replayed']))
  })

  it('refuses a CORS_ORIGINS entry that is not an origin', async () => {
    await expect(start({ env: { ...ENV, CORS_ORIGINS: 'https://app.example.com/path' } })).rejects.toThrow(/CORS_ORIGINS/)
  })
})

describe('signed links', () => {
  it('open the content without a key, for this task only, until they expire; a tampered sig is refused',
    async () => {
      let skew = 0
      const h = await start({ listen: true, env: ENV, clock: () => Date.now() + skew })
      const task = await storedTask(h)
      const other = await storedTask(h)
      const res = await links(h, task.id)
      expect(res.statusCode, res.body).toBe(200)
      const link: Links = res.json()
      expect(Date.parse(link.expires_at) - Date.now()).toBeGreaterThan(14 * 60_000)
      expect(Date.parse(link.expires_at) - Date.now()).toBeLessThanOrEqual(15 * 60_000)
      expect(link.content_url.startsWith(`${h.config.publicBaseUrl}/v1/videos/${task.id}/content?sig=`)).toBe(true)

      // Over real HTTP, no Authorization header: what a <video src> does.
      const video = await fetch(link.content_url)
      expect(video.status).toBe(200)
      expect(Buffer.from(await video.arrayBuffer()).equals(Simulator.videoBytes(task.upstreamId))).toBe(true)
      const ranged = await h.app.inject({ url: local(link.content_url), headers: { range: 'bytes=0-3' } })
      expect(ranged.statusCode).toBe(206)

      // Bound to the task: the same sig on another task's content is refused.
      const sig = new URL(link.content_url).searchParams.get('sig') as string
      const moved = await h.app.inject({ url: `/v1/videos/${other.id}/content?sig=${sig}` })
      expect(moved.statusCode).toBe(401)
      expect(moved.json().code).toBe('UNAUTHORIZED')
      // And to the route: the content sig does not open the events.
      expect((await h.app.inject({ url: `/v1/videos/${task.id}/events?sig=${sig}` })).statusCode).toBe(401)

      // Tampered: one character of the MAC (its last: a twin spelling of the same bits is refused too), the expiry
      // or the caller changed.
      const last = sig.at(-1) === 'A' ? 'B' : 'A'
      const [, exp] = sig.split('.')
      for (const bad of [sig.slice(0, -1) + last, sig.replace(`.${exp}.`, `.${Number(exp) + 3600}.`),
        sig.replace(/^alice\./, 'bob.'), 'nonsense']) {
        const r = await h.app.inject({ url: `/v1/videos/${task.id}/content?sig=${encodeURIComponent(bad)}` })
        expect(r.statusCode, bad).toBe(401)
      }
      // The MAC's twin spelling (the last character's 2 unused bits set) decodes to the same bytes: refused.
      const b64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
      const twin = sig.slice(0, -1) + b64[b64.indexOf(sig.at(-1) as string) + 1]
      expect(Buffer.from(twin.split('.').at(-1) as string, 'base64url'))
        .toEqual(Buffer.from(sig.split('.').at(-1) as string, 'base64url'))
      expect((await h.app.inject({ url: `/v1/videos/${task.id}/content?sig=${twin}` })).statusCode).toBe(401)
      // No sig and no key: 401 as ever.
      expect((await h.app.inject({ url: `/v1/videos/${task.id}/content` })).statusCode).toBe(401)

      // Past expires_at (the app's clock 16 minutes on): refused, saying so.
      skew = 16 * 60_000
      const expired = await h.app.inject({ url: local(link.content_url) })
      expect(expired.statusCode).toBe(401)
      expect(expired.json().detail).toContain('expired')
      skew = 0

      // Another caller cannot make links of alice's task.
      expect((await links(h, task.id, 'bob')).statusCode).toBe(404)

      // The sig never reaches a log line, though every request above was logged with its URL.
      expect(h.logs.text).toContain('/content?sig=[REDACTED]')
      expect(h.logs.text).not.toContain(sig.split('.')[2])
    })

  it('open the event stream without a key, as an EventSource would', async () => {
    const h = await start({ listen: true, env: ENV })
    const task = await storedTask(h)
    const link: Links = (await links(h, task.id)).json()
    const stream = await readSse(link.events_url, {}, { timeoutMs: 5000 })
    expect(stream.status).toBe(200)
    expect(stream.ended).toBe(true)
    expect(stream.frames.map(f => f.event)).toEqual(expect.arrayContaining(['video.queued', 'video.stored']))
    // A key beside a link decides alone: a wrong key is 401 whatever the link.
    const wrong = { authorization: 'Bearer wrong-key-0123456789' }
    const bad = await h.app.inject({ url: local(link.events_url), headers: wrong })
    expect(bad.statusCode).toBe(401)
    expect(h.logs.text).not.toContain(new URL(link.events_url).searchParams.get('sig') as string)
  })
})
