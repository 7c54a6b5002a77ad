/**
 * How an open SSE stream is kept, over real loopback sockets against real Redis:
 * - A client that stops reading: the server keeps at most MAX_QUEUED_BYTES waiting for it, then cuts that stream
 *   (it frees its caller's place; the client would resume with Last-Event-ID), while a client reading the same task
 *   gets every event in order. The events go through the real `{prefix}:events` stream and the replica's `live`
 *   reader, as a transition's would (large ones, so a few MB pass quickly).
 * - Heartbeats do not read Redis: a stream reads its task's log again only when it has a reason, here the `live`
 *   reader coming back after failed reads (an event it may have missed is in the log, not in the stream).
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

    // The reader: collects the sequence of every event frame.
    const controller = new AbortController()
    const res = await fetch(`${base}${path}`, { headers: auth('alice'), signal: controller.signal })
    expect(res.status).toBe(200)
    const seen: number[] = []
    let readerEnded = false
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
            const data = /^data: (.*)$/m.exec(frame)?.[1]
            if (data !== undefined) seen.push((JSON.parse(data) as { sequence: number }).sequence)
          }
        }
        readerEnded = true
      } catch {}
    })()

    // The stalled client: sends its request and never reads a byte of the answer.
    const slow: Socket = connect(Number(new URL(base).port), '127.0.0.1')
    await once(slow, 'connect')
    slow.pause()
    slow.write(`GET ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: ${auth('alice').authorization}\r\n\r\n`)
    const hub = h.app.deps.hub
    const until = async (what: string, ok: () => boolean, ms = 5000) => {
      for (const end = Date.now() + ms; !ok(); await new Promise(resolve => setTimeout(resolve, 5))) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
      }
    }
    await until('both streams open', () => hub.listening === 2 && seen.length === 1)
    // The caller's two places are taken.
    expect((await fetch(`${base}${path}`, { headers: auth('alice') })).status).toBe(429)

    const stream = keys(h.prefix).events
    let sent = 0
    let cutAfter: number | null = null
    for (let sequence = 2; sequence <= MAX_EVENTS && (cutAfter === null || sequence <= cutAfter + 3); sequence++) {
      const event = {
        id: `evt_slow_${sequence}`,
        type: 'video.processing',
        task_id: task.id,
        caller: 'alice',
        sequence,
        created_at: new Date().toISOString(),
        data: { status: 'processing', pad: 'x'.repeat(PAD) }
      }
      await h.redis.xadd(stream, '*', 'data', JSON.stringify(event))
      sent += PAD
      // Paced by the reader, as real events are: it is never behind, so only the stalled client's queue grows.
      await until(`event ${sequence} read`, () => seen.at(-1) === sequence)
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
    expect(seen).toEqual(Array.from({ length: seen.length }, (_, i) => i + 1))
    expect(seen.length).toBe((cutAfter as number) + 3)

    // What the stalled client does get, once it reads, is at most what the kernel held plus the bound.
    let received = 0
    slow.on('data', (chunk: Buffer) => { received += chunk.length })
    slow.resume()
    await Promise.race([once(slow, 'close'), new Promise(resolve => setTimeout(resolve, 5000))])
    expect(slow.destroyed || slow.readableEnded).toBe(true)
    expect(received).toBeLessThan(sent)
    slow.destroy()
    expect(readerEnded).toBe(false)
    controller.abort()
    await reading
  })

  it('reads the task log on heartbeats only after the live reader resumed, then delivers what the stream missed',
    async () => {
      const task = await createTask(h)
      const controller = new AbortController()
      const url = `${base}/v1/videos/${task.id}/events`
      const res = await fetch(url, { headers: auth('alice'), signal: controller.signal })
      expect(res.status).toBe(200)
      const seen: number[] = []
      let pings = 0
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
              if (frame === ': ping') pings++
              const data = /^data: (.*)$/m.exec(frame)?.[1]
              if (data !== undefined) seen.push((JSON.parse(data) as { sequence: number }).sequence)
            }
          }
        } catch {}
      })()
      const until = async (what: string, ok: () => boolean, ms = 5000) => {
        for (const end = Date.now() + ms; !ok(); await new Promise(resolve => setTimeout(resolve, 5))) {
          if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
        }
      }
      await until('the replay', () => seen.length === 1)

      // An event in the task's log that the event stream never carried (as one trimmed before the reader saw it).
      const k = keys(h.prefix)
      const missed = {
        id: 'evt_missed_from_the_stream',
        type: 'video.processing',
        task_id: task.id,
        caller: 'alice',
        sequence: 2,
        created_at: new Date().toISOString(),
        data: { status: 'processing' }
      }
      await h.redis.rpush(k.taskEvents(task.id), JSON.stringify(missed))
      // Heartbeats alone do not look for it (no read of Redis per stream per heartbeat).
      const from = pings
      await until('three heartbeats', () => pings >= from + 3)
      expect(seen).toEqual([1])

      // The live reader's reads fail (the stream key briefly holds a string), then go through again.
      const resumes = h.app.deps.hub.resumes
      await h.redis.rename(k.events, `${k.events}:aside`)
      await h.redis.set(k.events, 'not a stream')
      await until('a failed read', () => h.logs.text.includes('event stream read failed'))
      await h.redis.del(k.events)
      await h.redis.rename(`${k.events}:aside`, k.events)
      await until('the resume', () => h.app.deps.hub.resumes > resumes)
      // The next heartbeat reads the log: the missed event arrives, once.
      await until('the missed event', () => seen.length === 2)
      expect(seen).toEqual([1, 2])
      const after = pings
      await until('two more heartbeats', () => pings >= after + 2)
      expect(seen).toEqual([1, 2])
      controller.abort()
      await reading
    })
})
