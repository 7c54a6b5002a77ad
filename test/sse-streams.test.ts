/**
 * How an open SSE stream is kept, over real loopback sockets against real Redis:
 * - A client that stops reading: the server keeps at most MAX_QUEUED_BYTES waiting for it, then cuts that stream
 *   (it frees its caller's place; the client would resume with Last-Event-ID), while a client reading the same task
 *   gets every event in order. The events go through the real `{prefix}:events` stream and the replica's `live`
 *   reader, as a transition's would (large ones, so a few MB pass quickly).
 * - Heartbeats do not read Redis: a stream reads its task's log again only when it has a reason: the `live`
 *   reader coming back after failed reads (an event it may have missed is in the log, not in the stream), or a
 *   catch-up of its own that failed (retried at each heartbeat, one warning).
 */
import { connect, type Socket } from 'node:net'
import { once } from 'node:events'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { auth, startHarness, type Harness } from './helpers/harness.ts'
import { createTask } from './helpers/tasks.ts'
import { keys } from '../src/store/keys.ts'
import { MAX_QUEUED_BYTES } from '../src/routes/events.ts'

const PAD = 64 * 1024
/** Far past what the kernel's socket buffers on loopback take (tcp_wmem max 4 MB + the receiver's window). */
const MAX_EVENTS = 400

/** A client that reads a stream as it comes: the sequence of every event frame, and the heartbeats. */
interface Follower { res: Response, seen: number[], pings: number, ended: boolean, stop: () => Promise<void> }
async function follow (url: string): Promise<Follower> {
  const controller = new AbortController()
  const res = await fetch(url, { headers: auth('alice'), signal: controller.signal })
  const f: Follower = { res, seen: [], pings: 0, ended: false, stop: async () => {} }
  const reading = (async () => {
    let buffer = ''
    const decoder = new TextDecoder()
    try {
      for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
        buffer += decoder.decode(chunk, { stream: true })
        let cut
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, cut)
          buffer = buffer.slice(cut + 2)
          if (frame === ': ping') f.pings++
          const data = /^data: (.*)$/m.exec(frame)?.[1]
          if (data !== undefined) f.seen.push((JSON.parse(data) as { sequence: number }).sequence)
        }
      }
      f.ended = true
    } catch {}
  })()
  f.stop = async () => { controller.abort(); await reading }
  return f
}

async function until (what: string, ok: () => boolean, ms = 5000): Promise<void> {
  for (const end = Date.now() + ms; !ok(); await new Promise(resolve => setTimeout(resolve, 5))) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
  }
}

/** An event of `taskId` as the task scripts write it, but written by the test, where it wants it. */
function eventJson (taskId: string, sequence: number, data: Record<string, unknown> = {}): string {
  return JSON.stringify({
    id: `evt_test_${sequence}`,
    type: 'video.processing',
    task_id: taskId,
    caller: 'alice',
    sequence,
    created_at: new Date().toISOString(),
    data: { status: 'processing', ...data }
  })
}

describe('SSE streams', () => {
  let h: Harness
  let base: string
  beforeAll(async () => {
    h = await startHarness({
      listen: true, sim: { auto: false }, workers: false, env: { CALLER_MAX_SSE_STREAMS: '2', SSE_HEARTBEAT_MS: '100' }
    })
    base = h.config.publicBaseUrl as string
  })
  afterAll(async () => { await h.close() })

  it('cuts a client that does not read once its queue passes the bound; a reading one gets every event', async () => {
    const task = await createTask(h)
    const path = `/v1/videos/${task.id}/events`
    const reader = await follow(`${base}${path}`)
    expect(reader.res.status).toBe(200)

    // The stalled client: sends its request and never reads a byte of the answer.
    const slow: Socket = connect(Number(new URL(base).port), '127.0.0.1')
    await once(slow, 'connect')
    slow.pause()
    slow.write(`GET ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: ${auth('alice').authorization}\r\n\r\n`)
    const hub = h.app.deps.hub
    await until('both streams open', () => hub.listening === 2 && reader.seen.length === 1)
    // The caller's two places are taken.
    expect((await fetch(`${base}${path}`, { headers: auth('alice') })).status).toBe(429)

    let sent = 0
    let cutAfter: number | null = null
    for (let sequence = 2; sequence <= MAX_EVENTS && (cutAfter === null || sequence <= cutAfter + 3); sequence++) {
      await h.redis.xadd(keys(h.prefix).events, '*', 'data', eventJson(task.id, sequence, { pad: 'x'.repeat(PAD) }))
      sent += PAD
      // Paced by the reader, as real events are: it is never behind, so only the stalled client's queue grows.
      await until(`event ${sequence} read`, () => reader.seen.at(-1) === sequence)
      if (cutAfter === null && hub.listening === 1) cutAfter = sequence
    }

    // Cut long before every event was queued for it: the kernel's buffers plus the bound, not the whole 25 MB.
    expect(cutAfter).not.toBeNull()
    expect(sent).toBeLessThan(MAX_EVENTS * PAD / 2)
    expect((cutAfter as number) * PAD).toBeLessThan(4 * 1024 * 1024 + 1024 * 1024 + MAX_QUEUED_BYTES + 2 * PAD)
    // Its place is free again (still two at most), and the reader missed nothing, in order.
    const third = new AbortController()
    expect((await fetch(`${base}${path}`, { headers: auth('alice'), signal: third.signal })).status).toBe(200)
    third.abort()
    expect(reader.seen).toEqual(Array.from({ length: (cutAfter as number) + 3 }, (_, i) => i + 1))

    // What the stalled client does get, once it reads, is at most what the kernel held plus the bound.
    let received = 0
    slow.on('data', (chunk: Buffer) => { received += chunk.length })
    slow.resume()
    await Promise.race([once(slow, 'close'), new Promise(resolve => setTimeout(resolve, 5000))])
    expect(slow.destroyed || slow.readableEnded).toBe(true)
    expect(received).toBeLessThan(sent)
    slow.destroy()
    expect(reader.ended).toBe(false)
    await reader.stop()
  })

  it('reads the task log on heartbeats only after the live reader resumed, then delivers what the stream missed',
    async () => {
      const task = await createTask(h)
      const reader = await follow(`${base}/v1/videos/${task.id}/events`)
      expect(reader.res.status).toBe(200)
      await until('the replay', () => reader.seen.length === 1)

      // An event in the task's log that the event stream never carried (as one trimmed before the reader saw it).
      const k = keys(h.prefix)
      await h.redis.rpush(k.taskEvents(task.id), eventJson(task.id, 2))
      // Heartbeats alone do not look for it (no read of Redis per stream per heartbeat).
      const from = reader.pings
      await until('three heartbeats', () => reader.pings >= from + 3)
      expect(reader.seen).toEqual([1])

      // The live reader's reads fail (the stream key briefly holds a string), then go through again.
      const resumes = h.app.deps.hub.resumes
      await h.redis.rename(k.events, `${k.events}:aside`)
      await h.redis.set(k.events, 'not a stream')
      await until('a failed read', () => h.logs.text.includes('event stream read failed'))
      await h.redis.del(k.events)
      await h.redis.rename(`${k.events}:aside`, k.events)
      await until('the resume', () => h.app.deps.hub.resumes > resumes)
      // The next heartbeat reads the log: the missed event arrives, once.
      await until('the missed event', () => reader.seen.length === 2)
      const after = reader.pings
      await until('two more heartbeats', () => reader.pings >= after + 2)
      expect(reader.seen).toEqual([1, 2])
      await reader.stop()
    })

  it('retries a failed catch-up at each heartbeat, warning once, until the log can be read', async () => {
    const task = await createTask(h)
    const reader = await follow(`${base}/v1/videos/${task.id}/events`)
    expect(reader.res.status).toBe(200)
    await until('the replay', () => reader.seen.length === 1)

    // The task's log cannot be read for a while (its key holds a string), and an event comes with a gap before it.
    const log = keys(h.prefix).taskEvents(task.id)
    const warnings = () => h.logs.lines.filter(l => l.includes('sse catch-up failed')).length
    const before = warnings()
    await h.redis.rename(log, `${log}:aside`)
    await h.redis.set(log, 'not a list')
    await h.redis.rpush(`${log}:aside`, eventJson(task.id, 2), eventJson(task.id, 3))
    await h.redis.xadd(keys(h.prefix).events, '*', 'data', eventJson(task.id, 3))
    await until('a failed catch-up', () => warnings() > before)
    const from = reader.pings
    await until('three heartbeats', () => reader.pings >= from + 3)
    expect(reader.seen).toEqual([1])
    expect(warnings()).toBe(before + 1)

    // Readable again: the next heartbeat's catch-up sends what was missed, in order.
    await h.redis.del(log)
    await h.redis.rename(`${log}:aside`, log)
    await until('the missed events', () => reader.seen.length === 3)
    expect(reader.seen).toEqual([1, 2, 3])
    await reader.stop()
  })
})
