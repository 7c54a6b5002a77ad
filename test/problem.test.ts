import { describe, it, expect } from 'vitest'
import { Type } from 'typebox'
import { startHarness } from './helpers/harness.ts'
import { Conflict } from '../src/domain/errors.ts'

describe('problem+json', () => {
  it('answers unknown routes, validation errors, our errors and crashes in one shape', async () => {
    const h = await startHarness()
    // Routes added by the test before ready() exercise the one error handler with every kind of error.
    await h.app.close()
    const { buildApp } = await import('../src/app.ts')
    const app = await buildApp({
      config: h.config, redis: h.redis, upstream: h.upstream, blobs: h.blobs, logger: h.app.log as never
    })
    app.post('/t/validate', {
      schema: {
        body: Type.Object({
          a: Type.String({ maxLength: 3 }),
          b: Type.Array(Type.Integer(), { maxItems: 2 }),
          c: Type.Object({ d: Type.Boolean() })
        }, { additionalProperties: false }),
        querystring: Type.Object({ n: Type.Optional(Type.Integer({ maximum: 5 })) })
      }
    }, async () => ({ ok: true }))
    app.get('/t/conflict', async () => { throw new Conflict('NOT_CANCELABLE', 'it is done') })
    app.get('/t/crash', async () => { throw new Error('secret internal detail at /srv/x.ts:12') })
    await app.ready()

    const notFound = await app.inject('/nope?token=abc')
    expect(notFound.statusCode).toBe(404)
    expect(notFound.headers['content-type']).toMatch(/^application\/problem\+json/)
    expect(notFound.json())
      .toMatchObject({ status: 404, code: 'NOT_FOUND', title: 'Not Found', detail: 'no route GET /nope' })

    const bad = await app.inject({
      method: 'POST', url: '/t/validate', payload: { a: 'toolong', b: [1, 'x', 3], c: {}, zz: 1 }
    })
    expect(bad.statusCode).toBe(400)
    const body = bad.json()
    expect(body)
      .toMatchObject({ status: 400, code: 'INVALID_REQUEST', type: 'urn:kling-gateway:problem:invalid_request' })
    const pointers = body.errors.map((e: { pointer: string }) => e.pointer).sort()
    expect(pointers).toEqual(['/a', '/b', '/b/1', '/c/d', '/zz'])
    expect(body.errors.find((e: { pointer: string }) => e.pointer === '/zz').detail).toBe('is not an accepted field')
    expect(body.errors.every((e: { location: string }) => e.location === 'body')).toBe(true)

    const badQuery = await app.inject({
      method: 'POST', url: '/t/validate?n=9', payload: { a: 'x', b: [], c: { d: true } }
    })
    expect(badQuery.json().errors).toEqual([{ pointer: '/n', detail: 'must be <= 5', location: 'query' }])

    const badJson = await app.inject({
      method: 'POST', url: '/t/validate', headers: { 'content-type': 'application/json' }, payload: '{"a":'
    })
    expect(badJson.statusCode).toBe(400)
    expect(badJson.headers['content-type']).toMatch(/problem\+json/)

    const conflict = await app.inject('/t/conflict')
    expect(conflict.statusCode).toBe(409)
    expect(conflict.json()).toMatchObject({ code: 'NOT_CANCELABLE', detail: 'it is done' })

    const crash = await app.inject('/t/crash')
    expect(crash.statusCode).toBe(500)
    expect(crash.json()).toMatchObject({ status: 500, code: 'INTERNAL' })
    expect(crash.body).not.toContain('secret internal detail')
    await app.close()
    await h.close()
  })
})
