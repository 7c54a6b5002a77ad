/**
 * The group reader against a real Redis: an entry whose handler failed is handed out again by the same consumer
 * on its next pass, at once, not after CLAIM_IDLE_MS (the chaos case delayed-command/create-script lost webhooks
 * for 30 s this way: the fan-out's own Redis read timed out behind a held command, the entry stayed pending).
 */
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import pino from 'pino'
import { afterEach, describe, expect, inject, it } from 'vitest'
import type { TaskEvent } from '../src/domain/task.ts'
import { CLAIM_IDLE_MS, GroupReader, TailReader } from '../src/events/readers.ts'
import { EventStream } from '../src/store/event-stream.ts'
import { waitFor } from './helpers/group-process.ts'

const clients: Redis[] = []
const readers: Array<GroupReader | TailReader> = []
afterEach(async () => {
  await Promise.all(readers.splice(0).map(async r => await r.stop()))
  for (const c of clients.splice(0)) c.disconnect()
})

function connect (): Redis {
  const c = new Redis(inject('redisUrl'), { lazyConnect: false, maxRetriesPerRequest: 1 })
  clients.push(c)
  return c
}

const event = (n: number) => ({ id: `evt_${n}`, type: 'task.updated', task_id: `t${n}` }) as unknown as TaskEvent

describe('GroupReader', () => {
  it('hands a failed entry to its own consumer again at once, then goes on with new ones, acking each', async () => {
    const redis = connect()
    const stream = new EventStream(redis, `t${randomBytes(6).toString('hex')}:events`)
    const seen: string[] = []
    let failures = 0
    const reader = new GroupReader('webhooks', stream, connect(), pino({ level: 'silent' }), e => {
      seen.push(e.id)
      if (e.id === 'evt_1' && failures++ < 2) throw new Error('fan-out read timed out')
    })
    readers.push(reader)
    await reader.ensureGroup()
    reader.start()
    for (const n of [1, 2]) await redis.xadd(stream.key, '*', 'data', JSON.stringify(event(n)))

    const t0 = Date.now()
    await waitFor('both events handled', () => seen.includes('evt_2') && seen.filter(id => id === 'evt_1').length === 3
      ? true
      : undefined, 10_000, 20)
    expect(Date.now() - t0).toBeLessThan(CLAIM_IDLE_MS / 5)
    expect(seen.filter(id => id === 'evt_1')).toHaveLength(3) // twice failed, once done
    await waitFor('nothing pending', async () =>
      ((await redis.xpending(stream.key, 'webhooks')) as [number])[0] === 0 ? true : undefined, 5000, 20)
  })

  it('with concurrency, a slow handler holds no entry behind it; a failed one is handed out again', async () => {
    const redis = connect()
    const stream = new EventStream(redis, `t${randomBytes(6).toString('hex')}:events`)
    const done: string[] = []
    let release: () => void = () => {}
    const held = new Promise<void>(resolve => { release = resolve })
    let failures = 0
    const reader = new GroupReader('webhooks', stream, connect(), pino({ level: 'silent' }), async e => {
      // evt_1 waits until evt_3 is handled: one at a time, this would never end.
      if (e.id === 'evt_1') await held
      if (e.id === 'evt_2' && failures++ === 0) throw new Error('fan-out failed once')
      if (e.id === 'evt_3') release()
      done.push(e.id)
    }, Date.now, 4)
    readers.push(reader)
    await reader.ensureGroup()
    for (const n of [1, 2, 3]) await redis.xadd(stream.key, '*', 'data', JSON.stringify(event(n)))
    reader.start()
    await waitFor('every event handled', () => ['evt_1', 'evt_2', 'evt_3'].every(id => done.includes(id))
      ? true
      : undefined, 10_000, 20)
    expect(done.indexOf('evt_3')).toBeLessThan(done.indexOf('evt_1'))
    // evt_2 failed once and was handed out again; the others were handled once each.
    expect(done.filter(id => id === 'evt_1')).toHaveLength(1)
    expect(done.filter(id => id === 'evt_3')).toHaveLength(1)
    await waitFor('nothing pending', async () =>
      ((await redis.xpending(stream.key, 'webhooks')) as [number])[0] === 0 ? true : undefined, 5000, 20)
  })
})

describe('TailReader', () => {
  it('says once that it resumed after failed reads, and goes on after the last entry it saw', async () => {
    const redis = connect()
    const stream = new EventStream(redis, `t${randomBytes(6).toString('hex')}:events`)
    await redis.xadd(stream.key, '*', 'data', JSON.stringify(event(0)))
    const seen: string[] = []
    let resumes = 0
    const warnings: string[] = []
    const logger = pino({ level: 'warn' }, { write: (line: string) => { warnings.push(line) } })
    const reader = new TailReader('live', stream, connect(), logger, e => { seen.push(e.id) }, () => { resumes++ })
    readers.push(reader)
    reader.start()
    await redis.xadd(stream.key, '*', 'data', JSON.stringify(event(1)))
    await waitFor('the first event', () => seen.length === 1 ? true : undefined, 5000, 10)
    expect(resumes).toBe(0)

    // Its reads fail for a while (the key holds a string), meanwhile the entries wait aside; then it is a stream again.
    await redis.rename(stream.key, `${stream.key}:aside`)
    await redis.set(stream.key, 'not a stream')
    await redis.xadd(`${stream.key}:aside`, '*', 'data', JSON.stringify(event(2)))
    await waitFor('two failed reads', () => warnings.length >= 2 ? true : undefined, 5000, 10)
    await redis.del(stream.key)
    await redis.rename(`${stream.key}:aside`, stream.key)
    await redis.xadd(stream.key, '*', 'data', JSON.stringify(event(3)))
    await waitFor('the events after the failures', () => seen.length === 3 ? true : undefined, 5000, 10)
    expect(seen).toEqual(['evt_1', 'evt_2', 'evt_3'])
    expect(resumes).toBe(1)
  })
})
