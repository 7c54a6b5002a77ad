/**
 * Names, roles and the audit trail (docs/API.md, "Auth and roles" and "Audit log"): caller names cannot read as
 * internal scopes, an admin key reads everything and changes only its own, an operator key changes anyone's, an
 * admin's `?reference=` names its caller, and every change is one audit line with the caller and the resource id,
 * never a secret. The real app, the run's real redis-server, the simulator and a webhook receiver over loopback.
 */
import { createHash } from 'node:crypto'
import { describe, it, expect, afterEach } from 'vitest'
import type { InjectOptions, LightMyRequestResponse } from 'fastify'
import { loadConfig } from '../src/config/index.ts'
import { keys } from '../src/store/keys.ts'
import type { TaskView } from '../src/domain/task.ts'
import { assertNoSecrets, auth, harnessPerTest, type Harness } from './helpers/harness.ts'
import { createTask, validBody } from './helpers/tasks.ts'
import { Receiver } from './helpers/receiver.ts'

const startHarness = harnessPerTest()
const receivers: Receiver[] = []
afterEach(async () => { for (const r of receivers.splice(0)) await r.close() })

type Who = 'alice' | 'bob' | 'ops' | 'root'
type Line = Record<string, unknown>

async function send (h: Harness, who: Who | { authorization: string }, method: 'GET' | 'POST' | 'DELETE',
  url: string, payload?: Record<string, unknown>): Promise<LightMyRequestResponse> {
  const opts: InjectOptions = { method, url, headers: typeof who === 'string' ? auth(who) : who }
  if (payload !== undefined) opts.payload = payload
  return await h.app.inject(opts)
}

/** A caller key the config would refuse (a reserved name), added behind its back as server.ts adds the dev key. */
function sneakKey (h: Harness, caller: string): { authorization: string } {
  const key = `sneak-${caller}-0123456789abcdef`
  h.config.apiKeys.push({ caller, sha256: createHash('sha256').update(key).digest(), admin: false, operator: false })
  return { authorization: `Bearer ${key}` }
}

const auditLines = (h: Harness): Line[] =>
  h.logs.lines.map(l => JSON.parse(l) as Line).filter(l => l.audit === true)

async function until<T> (get: () => Promise<T>, ok: (v: T) => boolean, ms = 5000): Promise<T> {
  let v = await get()
  for (let waited = 0; !ok(v) && waited < ms; waited += 25) {
    await new Promise(resolve => setTimeout(resolve, 25))
    v = await get()
  }
  return v
}

describe('caller names never collide with internal scopes', () => {
  it('refuses at start a caller name that is reserved, naming the entry and never the key', () => {
    for (const name of ['task-url', 'all', 'ep_0123abcd', 'dlv_x', 'evt_1', 'whsec_a']) {
      expect(() => loadConfig({ API_KEYS: `${name}:secret-key-0123456789` }), name)
        .toThrow(/API_KEYS: entry 1: the caller name is reserved/)
    }
    expect(() => loadConfig({ OPERATOR_API_KEYS: 'ok:secret-key-0123456789,all:secret-key-0123456789x' }))
      .toThrow(/OPERATOR_API_KEYS: entry 2/)
    expect(() => loadConfig({ API_KEYS: 'a:secret-key-0123456789' })).not.toThrow()
    // One key in two lists would have two roles, decided by list order.
    expect(() => loadConfig({ API_KEYS: 'a:secret-key-0123456789', ADMIN_API_KEYS: 'b:secret-key-0123456789' }))
      .toThrow(/same key is listed twice/)
    expect(() => loadConfig({ API_KEYS: 'a:secret-key-0123456789' })).not.toThrow(/secret-key/)
  })

  it('keeps caller, endpoint and task-url delivery indexes in distinct namespaces', () => {
    const k = keys('p')
    expect(k.deliveries({ caller: 'task-url' })).not.toBe(k.deliveries('task-url'))
    expect(k.deliveries({ caller: 'ep_1' })).not.toBe(k.deliveries({ endpoint: 'ep_1' }))
    expect(k.deliveries({ caller: 'all' }, 'failed')).not.toBe(k.deliveries('all', 'failed'))
  })

  it('a caller named `task-url` or like an endpoint id (past the config) sees none of alice\'s deliveries',
    async () => {
      const h = await startHarness({ sim: { auto: false } })
      const r = await Receiver.start()
      receivers.push(r)
      const ep = (await send(h, 'alice', 'POST', '/v1/webhook-endpoints', { url: r.url() })).json<{ id: string }>()
      await createTask(h, { webhook_url: r.url() })
      // Both destinations got deliveries: one to the endpoint, one to the task's own URL.
      const mine = await until(async () => (await send(h, 'alice', 'GET', '/v1/deliveries')).json().data as
        Array<{ endpoint_id: string | null }>, d => d.some(x => x.endpoint_id === null) && d.some(x => x.endpoint_id))
      expect(mine.some(d => d.endpoint_id === null)).toBe(true)
      expect(mine.some(d => d.endpoint_id === ep.id)).toBe(true)

      for (const name of ['task-url', ep.id]) {
        const res = await send(h, sneakKey(h, name), 'GET', '/v1/deliveries')
        expect(res.statusCode, res.body).toBe(200)
        expect(res.json().data, name).toEqual([])
        expect((await send(h, sneakKey(h, name), 'GET', '/v1/deliveries?status=failed')).json().data).toEqual([])
      }
    })
})

describe('admin reads everything, changes only its own; an operator changes anyone\'s', () => {
  it('tasks: cancel and resolve of another caller\'s are 403 for an admin, done for an operator', async () => {
    const h = await startHarness({ workers: false })
    const a = await createTask(h)
    const b = await createTask(h)
    expect((await send(h, 'ops', 'GET', `/v1/videos/${a.id}`)).statusCode).toBe(200)

    const refused = await send(h, 'ops', 'POST', `/v1/videos/${a.id}/cancel`)
    expect(refused.statusCode, refused.body).toBe(403)
    expect(refused.json()).toMatchObject({ code: 'OPERATOR_SCOPE_REQUIRED', status: 403, title: 'Forbidden' })
    expect(refused.json().detail).toContain('OPERATOR_API_KEYS')
    expect((await send(h, 'ops', 'GET', `/v1/videos/${a.id}`)).json().status).toBe('queued')
    // A plain caller still gets the 404 of a task it cannot see; an admin the 404 of one that does not exist.
    expect((await send(h, 'bob', 'POST', `/v1/videos/${a.id}/cancel`)).statusCode).toBe(404)
    expect((await send(h, 'ops', 'POST', '/v1/videos/no-such-task/cancel')).statusCode).toBe(404)
    // Resolve: the scope is checked before the hold, so an operator reaches NOT_HELD where an admin is refused.
    expect((await send(h, 'ops', 'POST', `/v1/videos/${a.id}/resolve`, { action: 'fail' })).json().code)
      .toBe('OPERATOR_SCOPE_REQUIRED')
    expect((await send(h, 'root', 'POST', `/v1/videos/${a.id}/resolve`, { action: 'fail' })).json().code)
      .toBe('NOT_HELD')

    // Its own task: the admin may cancel it (and resolve reaches the hold check).
    const own = await send(h, 'ops', 'POST', '/v1/videos', validBody())
    expect(own.statusCode, own.body).toBe(202)
    expect((await send(h, 'ops', 'POST', `/v1/videos/${own.json().id as string}/resolve`, { action: 'fail' }))
      .json().code).toBe('NOT_HELD')
    expect((await send(h, 'ops', 'POST', `/v1/videos/${own.json().id as string}/cancel`)).json().status)
      .toBe('canceled')

    // The operator may cancel alice's.
    const done = await send(h, 'root', 'POST', `/v1/videos/${a.id}/cancel`)
    expect(done.statusCode, done.body).toBe(200)
    expect(done.json().status).toBe('canceled')
    expect((await send(h, 'alice', 'POST', `/v1/videos/${b.id}/cancel`)).statusCode).toBe(200)
  })

  it('endpoints and deliveries: delete, rotate, recover, retry of another caller\'s are 403 for an admin',
    async () => {
      const h = await startHarness({ sim: { auto: false } })
      const r = await Receiver.start()
      receivers.push(r)
      const ep = (await send(h, 'alice', 'POST', '/v1/webhook-endpoints', { url: r.url() })).json<{ id: string }>()
      await createTask(h)
      const delivered = await until(async () => (await send(h, 'alice', 'GET', '/v1/deliveries')).json().data as
        Array<{ id: string, status: string }>, d => d.some(x => x.status === 'succeeded'))
      const dlv = delivered.find(d => d.status === 'succeeded')
      expect(dlv).toBeDefined()
      const dlvId = (dlv as { id: string }).id

      // The admin reads them all.
      expect((await send(h, 'ops', 'GET', '/v1/deliveries')).json().data.map((d: { id: string }) => d.id))
        .toContain(dlvId)
      expect((await send(h, 'ops', 'GET', `/v1/deliveries?endpoint=${ep.id}`)).statusCode).toBe(200)

      const changes: Array<['POST' | 'DELETE', string, Record<string, unknown> | undefined]> = [
        ['POST', `/v1/webhook-endpoints/${ep.id}/rotate-secret`, undefined],
        ['POST', `/v1/webhook-endpoints/${ep.id}/recover`, { since: '2020-01-01T00:00:00Z' }],
        ['POST', `/v1/deliveries/${dlvId}/retry`, undefined],
        ['DELETE', `/v1/webhook-endpoints/${ep.id}`, undefined]
      ]
      for (const [method, url, body] of changes) {
        const res = await send(h, 'ops', method, url, body)
        expect(res.statusCode, `${method} ${url}: ${res.body}`).toBe(403)
        expect(res.json().code).toBe('OPERATOR_SCOPE_REQUIRED')
        // Another plain caller cannot see them at all.
        expect((await send(h, 'bob', method, url, body)).statusCode, `${method} ${url}`).toBe(404)
      }
      expect((await send(h, 'alice', 'GET', '/v1/webhook-endpoints')).json().data).toHaveLength(1)

      // The operator may do each.
      const rotated = await send(h, 'root', 'POST', `/v1/webhook-endpoints/${ep.id}/rotate-secret`)
      expect(rotated.statusCode, rotated.body).toBe(200)
      expect(rotated.json().secret).toMatch(/^whsec_/)
      const recovered = await send(h, 'root', 'POST', `/v1/webhook-endpoints/${ep.id}/recover`,
        { since: '2020-01-01T00:00:00Z' })
      expect(recovered.statusCode, recovered.body).toBe(202)
      expect((await send(h, 'root', 'POST', `/v1/deliveries/${dlvId}/retry`)).statusCode).toBe(202)
      expect((await send(h, 'root', 'DELETE', `/v1/webhook-endpoints/${ep.id}`)).statusCode).toBe(204)
      expect((await send(h, 'alice', 'GET', '/v1/webhook-endpoints')).json().data).toEqual([])

      // An admin still changes its own endpoint.
      const mine = (await send(h, 'ops', 'POST', '/v1/webhook-endpoints', { url: r.url() })).json<{ id: string }>()
      expect((await send(h, 'ops', 'POST', `/v1/webhook-endpoints/${mine.id}/rotate-secret`)).statusCode).toBe(200)
      expect((await send(h, 'ops', 'DELETE', `/v1/webhook-endpoints/${mine.id}`)).statusCode).toBe(204)
    })
})

describe('?reference= and ?caller=', () => {
  it('an admin must name the caller of a reference; with it, that caller\'s task is found', async () => {
    const h = await startHarness({ workers: false })
    const a = await createTask(h, { reference: 'order-17' })
    const b = await createTask(h, { reference: 'order-17' }, 'bob')
    const list = async (who: Who, query: string) => await send(h, who, 'GET', `/v1/videos?${query}`)
    const ids = async (who: Who, query: string) => (await list(who, query)).json<{ data: TaskView[] }>()
      .data.map(t => t.id)

    const bare = await list('ops', 'reference=order-17')
    expect(bare.statusCode, bare.body).toBe(400)
    expect(bare.json().errors).toEqual([expect.objectContaining({ pointer: '/caller', location: 'query' })])
    expect(bare.json().errors[0].detail).toContain('?caller=')
    expect(await ids('ops', 'reference=order-17&caller=alice')).toEqual([a.id])
    expect(await ids('ops', 'reference=order-17&caller=bob')).toEqual([b.id])
    expect(await ids('ops', 'reference=order-17&caller=bob&status=canceled')).toEqual([])
    // A caller's own lookup needs no caller=; another caller's name finds nothing (never another's task).
    expect(await ids('alice', 'reference=order-17')).toEqual([a.id])
    expect(await ids('alice', 'reference=order-17&caller=alice')).toEqual([a.id])
    expect(await ids('alice', 'reference=order-17&caller=bob')).toEqual([])
    // caller= narrows the admin's listing too.
    expect(await ids('ops', 'caller=bob')).toEqual([b.id])
    expect((await ids('ops', 'limit=10')).sort()).toEqual([a.id, b.id].sort())
    expect(await ids('bob', 'caller=alice')).toEqual([])
  })
})

describe('audit', () => {
  it('logs one line per change with the caller, its role, the resource id and the outcome, and no secret',
    async () => {
      const h = await startHarness({ sim: { auto: false } })
      const r = await Receiver.start()
      receivers.push(r)
      const created = await send(h, 'alice', 'POST', '/v1/webhook-endpoints', { url: r.url() })
      const ep = created.json<{ id: string, secret: string }>()
      const task = await createTask(h)
      const dlv = (await until(async () => (await send(h, 'alice', 'GET', '/v1/deliveries')).json().data as
        Array<{ id: string, status: string }>, d => d.some(x => x.status === 'succeeded')))
        .find(d => d.status === 'succeeded') as { id: string }
      const queued = await send(h, 'alice', 'POST', '/v1/videos', validBody())

      expect((await send(h, 'ops', 'POST', `/v1/videos/${queued.json().id as string}/cancel`)).statusCode).toBe(403)
      const rotated = await send(h, 'alice', 'POST', `/v1/webhook-endpoints/${ep.id}/rotate-secret`)
      await send(h, 'alice', 'POST', `/v1/webhook-endpoints/${ep.id}/recover`, { since: '2020-01-01T00:00:00Z' })
      await send(h, 'root', 'POST', `/v1/deliveries/${dlv.id}/retry`)
      await send(h, 'root', 'POST', `/v1/videos/${task.id}/resolve`, { action: 'fail' })
      await send(h, 'alice', 'DELETE', `/v1/webhook-endpoints/${ep.id}`)

      const lines = auditLines(h)
      const one = (action: string, match: Line) => {
        const found = lines.filter(l => l.action === action && Object.entries(match).every(([k, v]) => l[k] === v))
        expect(found, `${action} ${JSON.stringify(match)} in ${JSON.stringify(lines)}`).toHaveLength(1)
        expect(found[0].level).toBe(30)
        return found[0]
      }
      one('endpoint.create', { caller: 'alice', role: 'caller', endpoint_id: ep.id, outcome: 'ok' })
      one('task.create', { caller: 'alice', task_id: task.id, kind: 'multi-image2video', outcome: 'accepted' })
      one('task.cancel', {
        caller: 'ops', role: 'admin', task_id: queued.json().id, owner: 'alice', outcome: 'OPERATOR_SCOPE_REQUIRED'
      })
      one('endpoint.rotate_secret', { caller: 'alice', endpoint_id: ep.id, owner: 'alice', outcome: 'ok' })
      one('endpoint.recover', { caller: 'alice', endpoint_id: ep.id, recovered: 0, outcome: 'ok' })
      one('delivery.retry', {
        caller: 'root', role: 'operator', delivery_id: dlv.id, owner: 'alice', task_id: task.id, outcome: 'ok'
      })
      one('task.resolve', { caller: 'root', task_id: task.id, resolution: 'fail', outcome: 'NOT_HELD' })
      one('endpoint.delete', { caller: 'alice', endpoint_id: ep.id, outcome: 'ok' })

      // Never a secret: no key (assertNoSecrets), and neither the endpoint's first nor its rotated secret.
      assertNoSecrets(h.logs.text)
      expect(h.logs.text).not.toContain(ep.secret)
      expect(h.logs.text).not.toContain(rotated.json().secret as string)
      expect(h.logs.text).not.toMatch(/whsec_/)
    })
})
