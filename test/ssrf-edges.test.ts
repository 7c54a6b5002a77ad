/**
 * SSRF edges (GitHub issue 13, item 6): ports, the IANA special-purpose ranges, and one refusal message whatever
 * the cause, in the module and through the real app.
 */
import { describe, it, expect } from 'vitest'
import { auth, startHarness } from './helpers/harness.ts'
import {
  CANNOT_USE, UnsafeTarget, checkWebhookTarget, checkWebhookUrl, isForbiddenAddress
} from '../src/notify/ssrf.ts'

const STRICT = { allowPrivate: false }

describe('SSRF edges', () => {
  it.each([
    '192.88.99.1', '0.0.0.1', '100.64.0.1', '192.0.0.8', '192.0.2.1', '198.18.0.1', '198.51.100.1', '203.0.113.1',
    '240.0.0.1', '255.255.255.255', '64:ff9b::808:808', '64:ff9b::8.8.8.8',
    '64:ff9b::7f00:1', '2001:db8::1', '100::1', '2001:2::1',
    '::ffff:192.88.99.1', '2002:c058:6301::1'
  ])('refuses %s', ip => { expect(isForbiddenAddress(ip)).toBe(true) })

  it.each(['8.8.8.8', '1.1.1.1', '2606:4700:4700::1111', '192.88.100.1'])('allows %s', ip => {
    expect(isForbiddenAddress(ip)).toBe(false)
  })

  it('allows only 443 and 8443 by default, a configured list instead, and any port with allowPrivate', () => {
    expect(checkWebhookUrl('https://example.com/h', STRICT).port).toBe('')
    expect(checkWebhookUrl('https://example.com:443/h', STRICT).port).toBe('')
    expect(checkWebhookUrl('https://example.com:8443/h', STRICT).port).toBe('8443')
    for (const url of ['https://example.com:22/', 'https://example.com:6379/', 'https://example.com:8080/']) {
      expect(() => checkWebhookUrl(url, STRICT)).toThrow(CANNOT_USE)
    }
    expect(checkWebhookUrl('https://example.com:9443/', { allowPrivate: false, allowedPorts: [9443] }).port)
      .toBe('9443')
    expect(() => checkWebhookUrl('https://example.com/', { allowPrivate: false, allowedPorts: [9443] }))
      .toThrow(CANNOT_USE)
    expect(checkWebhookUrl('http://127.0.0.1:6379/', { allowPrivate: true }).port).toBe('6379')
  })

  it('says the same for a private address, an internal name, a name that does not resolve, a port', async () => {
    const messages = new Set<string>()
    for (const url of [
      'https://10.0.0.1/', 'https://localhost/', 'https://metadata.google.internal/',
      'https://no-such-host.invalid/', 'https://example.com:25/'
    ]) {
      const err = await checkWebhookTarget(url, STRICT).then(() => undefined, (e: unknown) => e)
      expect(err, url).toBeInstanceOf(UnsafeTarget)
      messages.add((err as Error).message)
    }
    expect([...messages]).toEqual([CANNOT_USE])
    expect(CANNOT_USE).toContain('WEBHOOK_ALLOW_PRIVATE')
    expect(CANNOT_USE).toContain('WEBHOOK_ALLOWED_PORTS')
  })

  it('applies WEBHOOK_ALLOWED_PORTS at registration', async () => {
    const h = await startHarness({
      workers: false, env: { WEBHOOK_ALLOW_PRIVATE: 'false', WEBHOOK_ALLOWED_PORTS: '443, 9443' }
    })
    try {
      expect(h.config.webhooks.allowedPorts).toEqual([443, 9443])
      const res = await h.app.inject({
        method: 'POST', url: '/v1/webhook-endpoints', headers: auth('alice'), payload: { url: 'https://8.8.8.8:8443/' }
      })
      expect(res.statusCode).toBe(400)
      expect(res.headers['content-type']).toMatch(/problem\+json/)
      expect(res.json().errors).toEqual([{ pointer: '/url', detail: CANNOT_USE, location: 'body' }])
      const ok = await h.app.inject({
        method: 'POST', url: '/v1/webhook-endpoints', headers: auth('alice'), payload: { url: 'https://8.8.8.8:9443/' }
      })
      expect(ok.statusCode, ok.body).toBe(201)
    } finally {
      await h.close()
    }
  })
})
