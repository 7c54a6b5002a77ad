/**
 * Several replicas on one Redis prefix with BLOB_DRIVER=dir: each registers with a heartbeat, a replica whose blob
 * directory is not its live peers' refuses to start (or, meeting one later, turns unready), and replicas sharing a
 * directory serve each other's content. Real app, real redis-server, real simulator over loopback HTTP.
 */
import { keys } from '../src/store/keys.ts'
import { describe, it, expect, afterEach } from 'vitest'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DIR_ID_FILE, DirectoryBlobStore } from '../src/blobs/dir.ts'
import { BlobDirConflict, REGISTRATION_TTL_MS } from '../src/store/replicas.ts'
import { Simulator } from '../simulator/app.ts'
import { auth, KEYS, startHarness, type Harness } from './helpers/harness.ts'
import { createTask, waitFor } from './helpers/tasks.ts'

let cleanups: Array<() => Promise<unknown>> = []
afterEach(async () => { for (const c of cleanups.reverse()) await c(); cleanups = [] })
async function harness (...args: Parameters<typeof startHarness>): Promise<Harness> {
  const h = await startHarness(...args)
  let closed = false
  const close = h.close
  h.close = async () => { if (!closed) { closed = true; await close() } }
  cleanups.push(h.close)
  return h
}
async function tempDir (): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kg-replica-blobs-'))
  cleanups.push(async () => await rm(dir, { recursive: true, force: true }))
  return dir
}

describe('the blob directory identity', () => {
  it('is made once: stores opened at the same time on one directory read the same id from its file', async () => {
    const dir = await tempDir()
    const ids = await Promise.all(Array.from({ length: 8 }, async () => await new DirectoryBlobStore(dir).identity()))
    expect(new Set(ids).size).toBe(1)
    expect(ids[0]).toMatch(/^[0-9a-f-]{36}$/)
    expect((await readFile(join(dir, DIR_ID_FILE), 'utf8')).trim()).toBe(ids[0])
    expect(await new DirectoryBlobStore(await tempDir()).identity()).not.toBe(ids[0])
  })
})

describe('replicas with BLOB_DRIVER=dir', () => {
  it('refuses a replica whose BLOB_DIR is not its live peer\'s, and takes it once that peer has closed', async () => {
    const a = await harness({ workers: false, keepKeys: true, blobs: new DirectoryBlobStore(await tempDir()) })
    const env = { REDIS_PREFIX: a.prefix }
    const other = await tempDir()
    let err: unknown
    try {
      await startHarness({ workers: false, env, blobs: new DirectoryBlobStore(other) })
    } catch (e) { err = e }
    expect(err).toBeInstanceOf(BlobDirConflict)
    const message = (err as Error).message
    expect(message).toContain('BLOB_DRIVER=dir')
    expect(message).toContain('BLOB_DIR')
    expect(message).toContain('Use BLOB_DRIVER=s3, or mount one shared BLOB_DIR on every replica.')
    expect(message).toContain(a.app.deps.replicas.id)
    // The refused replica left no registration behind, and the running one was not disturbed.
    expect(await a.app.deps.replicas.peers()).toEqual([])
    expect((await a.app.inject('/health/ready')).statusCode).toBe(200)

    // Closing removes a replica's registration at once (not after its TTL): the other directory may start now.
    await a.close()
    const b = await harness({ workers: false, env, blobs: new DirectoryBlobStore(other) })
    expect((await b.app.inject('/health/ready')).statusCode).toBe(200)
  })

  it('starts replicas that share one BLOB_DIR, and serves content made through one from the other', async () => {
    const sim = new Simulator({ apiKey: KEYS.comet, processingAfterMs: 30, finishAfterMs: 80 })
    await sim.listen()
    cleanups.push(async () => await sim.close())
    const shared = await tempDir()
    const env = { RECONCILE_INTERVAL_MS: '60000' }
    const a = await harness({ simulator: sim, listen: true, env, blobs: new DirectoryBlobStore(shared) })
    // B runs no workers: whatever it serves, A's mirror wrote.
    const b = await harness({
      simulator: sim,
      workers: false,
      keepKeys: true,
      env: { ...env, REDIS_PREFIX: a.prefix },
      blobs: new DirectoryBlobStore(shared)
    })
    const dirId = (await readFile(join(shared, DIR_ID_FILE), 'utf8')).trim()
    const peersOf = async (h: Harness) => (await h.app.deps.replicas.peers()).map(p => [p.id, p.blob_dir_id])
    expect(await peersOf(a)).toEqual([[b.app.deps.replicas.id, dirId]])
    expect(await peersOf(b)).toEqual([[a.app.deps.replicas.id, dirId]])

    const task = await createTask(a)
    const done = await waitFor(a, task.id, t => t.status === 'succeeded', 10_000)
    expect(done.status).toBe('succeeded')
    const stored = async () => (await a.app.deps.store.events(task.id)).some(e => e.type === 'video.stored')
    for (let i = 0; i < 250 && !await stored(); i++) await new Promise(resolve => setTimeout(resolve, 20))
    expect(await stored()).toBe(true)
    const res = await b.app.inject({ url: `/v1/videos/${task.id}/content`, headers: auth('alice') })
    expect(res.statusCode, res.body.slice(0, 200)).toBe(200)
    expect(res.rawPayload.equals(Simulator.videoBytes(done.upstream?.task_id as string))).toBe(true)
    const asBob = await b.app.inject({ url: `/v1/videos/${task.id}/content`, headers: auth('bob') })
    expect(asBob.statusCode).toBe(404)
    expect((await b.app.inject('/health/ready')).statusCode).toBe(200)
  })

  it('registers with a TTL; a running replica meeting a peer with another directory turns unready', async () => {
    const a = await harness({ workers: false })
    const { replicas } = a.app.deps
    const k = keys(a.prefix)
    const ttl = await a.redis.pttl(k.replica(replicas.id))
    expect(ttl).toBeGreaterThan(0)
    expect(ttl).toBeLessThanOrEqual(REGISTRATION_TTL_MS)

    // A peer with another directory that registered in the same instant as A, so neither refused the other.
    const peer = { id: 'peer-elsewhere', host: 'node-7', pid: 1, started_at: Date.now(), blob_dir_id: 'another-dir' }
    await a.redis.multi().set(k.replica(peer.id), JSON.stringify(peer), 'PX', 15_000).sadd(k.replicas, peer.id).exec()
    await replicas.beat()
    await replicas.beat()
    const ready = await a.app.inject('/health/ready')
    expect(ready.statusCode).toBe(503)
    expect(ready.json().status).toBe('misconfigured')
    expect(ready.json().reason).toContain('peer-elsewhere on node-7')
    expect(ready.json().reason).toContain('mount one shared BLOB_DIR on every replica')
    // Everything else is still served; the error is logged once, not on every heartbeat.
    expect((await a.app.inject({ url: '/v1/videos', headers: auth('alice') })).statusCode).toBe(200)
    const errors = () => a.logs.lines.map(l => JSON.parse(l) as { level: number, msg: string })
      .filter(l => l.level === 50 && l.msg.includes('peer-elsewhere'))
    expect(errors()).toHaveLength(1)

    // Once the peer's registration is gone (closed, or expired), the next heartbeat makes A ready again.
    await a.redis.del(k.replica(peer.id))
    await replicas.beat()
    expect((await a.app.inject('/health/ready')).statusCode).toBe(200)
    expect(await a.redis.sismember(k.replicas, peer.id)).toBe(0)
  })
})
