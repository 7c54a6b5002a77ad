import { readFileSync } from 'node:fs'
import http from 'node:http'
import { type AddressInfo } from 'node:net'
import { type LookupAddress } from 'node:dns'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { request } from 'undici'
import {
  UnsafeTarget,
  checkWebhookTarget,
  checkWebhookUrl,
  createGuardedAgent,
  guardedLookup,
  isForbiddenAddress
} from '../src/notify/ssrf.ts'

const STRICT = { allowPrivate: false }
const LOOSE = { allowPrivate: true }

function expectUnsafe (fn: () => unknown): void {
  let caught: unknown
  try {
    fn()
  } catch (err) {
    caught = err
  }
  expect(caught).toBeInstanceOf(UnsafeTarget)
  expect((caught as UnsafeTarget).code).toBe('UNSAFE_WEBHOOK_TARGET')
}

/** A /etc/hosts name for a loopback address that the name rules do not catch, if this machine has one. */
function loopbackAlias (): string | undefined {
  let text: string
  try {
    text = readFileSync('/etc/hosts', 'utf8')
  } catch {
    return undefined
  }
  for (const line of text.split('\n')) {
    const [addr, ...names] = line.replace(/#.*/, '').trim().split(/\s+/)
    if (addr === undefined || !(addr.startsWith('127.') || addr === '::1')) continue
    const name = names.find(n => n !== '' && !/(^|\.)(localhost|local|internal)$/i.test(n))
    if (name !== undefined) return name
  }
  return undefined
}

function lookupOnce (hostname: string, all: boolean, allowPrivate: boolean) {
  type Result = { err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number }
  return new Promise<Result>(resolve => {
    guardedLookup({ allowPrivate })(hostname, { all }, (err, address, family) => resolve({ err, address, family }))
  })
}

describe('isForbiddenAddress', () => {
  it.each([
    '127.0.0.1', '127.255.255.254', '10.1.2.3', '172.16.0.1', '172.31.255.255', '192.168.1.1', '169.254.169.254',
    '100.64.0.1', '100.127.255.255', '0.0.0.0', '0.1.2.3', '224.0.0.1', '239.255.255.250', '255.255.255.255',
    '240.0.0.1', '192.0.0.1', '198.18.0.1', '198.19.255.255',
    '::', '::1', 'fc00::1', 'fd00:ec2::254', 'fe80::1', 'febf::1', 'ff02::1', '[::1]', 'fe80::1%eth0',
    '::ffff:127.0.0.1', '::ffff:7f00:1', '::ffff:10.0.0.1', '::ffff:a9fe:a9fe', '0:0:0:0:0:ffff:192.168.0.1',
    '::127.0.0.1', '::8.8.8.8', '64:ff9b::7f00:1', '64:ff9b::10.0.0.1', '2002:7f00:1::', '2002:a9fe:a9fe::1',
    // not plain IP addresses: refused, fail closed
    '0x7f.1', '2130706433', '127.1', 'localhost', ''
  ])('%s is forbidden', ip => {
    expect(isForbiddenAddress(ip)).toBe(true)
  })

  it.each([
    '8.8.8.8', '1.1.1.1', '172.32.0.1', '172.15.255.255', '100.128.0.1', '100.63.255.255', '169.255.0.1',
    '192.169.0.1', '198.20.0.1', '223.255.255.255', '11.0.0.1',
    '2606:4700:4700::1111', '2001:4860:4860::8888', '::ffff:8.8.8.8', '::ffff:808:808',
    '2002:808:808::1', '[2606:4700:4700::1111]'
  ])('%s is allowed', ip => {
    expect(isForbiddenAddress(ip)).toBe(false)
  })
})

describe('checkWebhookUrl', () => {
  it('accepts a public https URL and returns it parsed, with no DNS', () => {
    const url = checkWebhookUrl('https://example.com/hook', STRICT)
    expect(url).toBeInstanceOf(URL)
    expect(url.hostname).toBe('example.com')
    expect(checkWebhookUrl('https://example.com:8443/hook?x=1', STRICT).port).toBe('8443')
    expect(checkWebhookUrl('https://8.8.8.8/hook', STRICT).hostname).toBe('8.8.8.8')
    expect(checkWebhookUrl('https://[2606:4700:4700::1111]/hook', STRICT).hostname).toBe('[2606:4700:4700::1111]')
  })

  it('refuses http by default and allows it with allowPrivate', () => {
    expectUnsafe(() => checkWebhookUrl('http://example.com/hook', STRICT))
    expect(checkWebhookUrl('http://example.com/hook', LOOSE).protocol).toBe('http:')
  })

  it('refuses other schemes and non-URLs even with allowPrivate', () => {
    for (const raw of ['ftp://example.com/', 'file:///etc/passwd', 'gopher://example.com/', 'not a url', '/hook']) {
      expectUnsafe(() => checkWebhookUrl(raw, STRICT))
      expectUnsafe(() => checkWebhookUrl(raw, LOOSE))
    }
  })

  it('refuses userinfo', () => {
    expectUnsafe(() => checkWebhookUrl('https://user:pass@example.com/hook', STRICT))
    expectUnsafe(() => checkWebhookUrl('https://user@example.com/hook', STRICT))
    expectUnsafe(() => checkWebhookUrl('https://:pass@example.com/hook', LOOSE))
  })

  it('refuses forbidden IP literals, including forms the URL parser normalises', () => {
    for (const raw of [
      'https://127.0.0.1/', 'https://[::1]/', 'https://2130706433/', 'https://0x7f.1/', 'https://127.1/',
      'https://0177.0.0.1/', 'https://169.254.169.254/latest/meta-data/', 'https://[::ffff:127.0.0.1]/',
      'https://[fd00:ec2::254]/', 'https://0.0.0.0:8080/', 'https://[::]/'
    ]) {
      expectUnsafe(() => checkWebhookUrl(raw, STRICT))
    }
    expect(new URL('https://2130706433/').hostname).toBe('127.0.0.1')
    expect(new URL('https://0x7f.1/').hostname).toBe('127.0.0.1')
  })

  it('refuses internal names', () => {
    for (const raw of [
      'https://localhost/hook', 'https://LOCALHOST./hook', 'https://api.localhost/hook', 'https://printer.local/',
      'https://metadata.google.internal/computeMetadata/v1/', 'https://svc.internal/'
    ]) {
      expectUnsafe(() => checkWebhookUrl(raw, STRICT))
    }
  })

  it('allows loopback literals and internal names with allowPrivate', () => {
    expect(checkWebhookUrl('http://127.0.0.1:3000/hook', LOOSE).hostname).toBe('127.0.0.1')
    expect(checkWebhookUrl('http://[::1]:3000/hook', LOOSE).hostname).toBe('[::1]')
    expect(checkWebhookUrl('http://localhost:3000/hook', LOOSE).hostname).toBe('localhost')
  })
})

describe('checkWebhookTarget', () => {
  it('refuses https://localhost/hook in the default config', async () => {
    await expect(checkWebhookTarget('https://localhost/hook', STRICT)).rejects.toMatchObject({ code: 'UNSAFE_WEBHOOK_TARGET' })
  })

  it('refuses the shape checks before any DNS', async () => {
    await expect(checkWebhookTarget('http://example.com/hook', STRICT)).rejects.toBeInstanceOf(UnsafeTarget)
    await expect(checkWebhookTarget('https://127.0.0.1/hook', STRICT)).rejects.toBeInstanceOf(UnsafeTarget)
  })

  const alias = loopbackAlias()
  it.runIf(alias !== undefined)('refuses a name that only DNS (/etc/hosts) maps to loopback', async () => {
    const url = `https://${alias}/hook`
    expect(() => checkWebhookUrl(url, STRICT)).not.toThrow()
    await expect(checkWebhookTarget(url, STRICT)).rejects.toMatchObject({
      code: 'UNSAFE_WEBHOOK_TARGET',
      message: expect.stringMatching(/cannot be used/)
    })
    expect((await checkWebhookTarget(`http://${alias}/hook`, LOOSE)).hostname).toBe(alias)
  })

  it('accepts loopback with allowPrivate', async () => {
    expect((await checkWebhookTarget('http://localhost:3000/hook', LOOSE)).port).toBe('3000')
  })
})

describe('guardedLookup', () => {
  it('fails a lookup of localhost with UnsafeTarget in the default config', async () => {
    for (const all of [true, false]) {
      const { err } = await lookupOnce('localhost', all, false)
      expect(err).toBeInstanceOf(UnsafeTarget)
      expect((err as UnsafeTarget).code).toBe('UNSAFE_WEBHOOK_TARGET')
    }
  })

  it.runIf(loopbackAlias() !== undefined)('fails a lookup of a loopback alias ' +
    'that is not named localhost', async () => {
    const { err } = await lookupOnce(loopbackAlias() as string, true, false)
    expect(err).toBeInstanceOf(UnsafeTarget)
  })

  it('answers in the shape asked for with allowPrivate', async () => {
    const many = await lookupOnce('localhost', true, true)
    expect(many.err).toBeNull()
    expect(Array.isArray(many.address)).toBe(true)
    expect((many.address as LookupAddress[]).map(a => a.address)).toContain('127.0.0.1')

    const one = await lookupOnce('localhost', false, true)
    expect(one.err).toBeNull()
    expect(typeof one.address).toBe('string')
    expect([4, 6]).toContain(one.family)
  })
})

describe('createGuardedAgent (connect-time checks against a real loopback server)', () => {
  let server: http.Server
  let port: number
  let connections = 0
  let requests = 0

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      requests++
      if (req.url === '/redirect') {
        res.writeHead(301, { location: 'http://127.0.0.1:1/elsewhere' }).end()
      } else if (req.url === '/hang') {
        // never answers: exercises headersTimeout
      } else {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok')
      }
    })
    server.on('connection', () => { connections++ })
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
    port = (server.address() as AddressInfo).port
  })

  afterAll(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })

  async function refused (url: string): Promise<void> {
    const agent = createGuardedAgent({ allowPrivate: false, timeoutMs: 2_000 })
    const before = { connections, requests }
    try {
      await expect(request(url, { dispatcher: agent, method: 'POST', body: '{}' })).rejects.toMatchObject({
        code: 'UNSAFE_WEBHOOK_TARGET'
      })
      await new Promise(resolve => setTimeout(resolve, 50))
      expect({ connections, requests }).toEqual(before)
    } finally {
      await agent.close()
    }
  }

  it('refuses http://localhost:<port>/ at connect time (name resolved by guardedLookup)', async () => {
    await refused(`http://localhost:${port}/`)
  })

  it('refuses http://127.0.0.1:<port>/ at connect time (IP literal, which never reaches lookup)', async () => {
    await refused(`http://127.0.0.1:${port}/`)
  })

  it('refuses other literal forms before any socket is opened', async () => {
    await refused(`https://127.0.0.1:${port}/`)
    await refused(`http://[::1]:${port}/`)
    await refused(`http://[::ffff:127.0.0.1]:${port}/`)
    await refused(`http://2130706433:${port}/`)
  })

  it.runIf(loopbackAlias() !== undefined)('refuses a loopback alias not named localhost', async () => {
    await refused(`http://${loopbackAlias()}:${port}/`)
  })

  it('reaches the server with allowPrivate, by name and by literal', async () => {
    const agent = createGuardedAgent({ allowPrivate: true, timeoutMs: 2_000 })
    try {
      for (const host of ['localhost', '127.0.0.1']) {
        const before = requests
        const res = await request(`http://${host}:${port}/hook`, { dispatcher: agent, method: 'POST', body: '{}' })
        expect(res.statusCode).toBe(200)
        expect(await res.body.text()).toBe('ok')
        expect(requests).toBe(before + 1)
      }
    } finally {
      await agent.close()
    }
  })

  it('returns a 301 as a 301 and does not follow it', async () => {
    const agent = createGuardedAgent({ allowPrivate: true, timeoutMs: 2_000 })
    try {
      const before = requests
      const res = await request(`http://127.0.0.1:${port}/redirect`, { dispatcher: agent })
      expect(res.statusCode).toBe(301)
      expect(res.headers.location).toBe('http://127.0.0.1:1/elsewhere')
      await res.body.dump()
      expect(requests).toBe(before + 1)
    } finally {
      await agent.close()
    }
  })

  it('applies timeoutMs as the headers timeout', async () => {
    const agent = createGuardedAgent({ allowPrivate: true, timeoutMs: 200 })
    try {
      const started = Date.now()
      await expect(request(`http://127.0.0.1:${port}/hang`, { dispatcher: agent })).rejects.toMatchObject({
        code: 'UND_ERR_HEADERS_TIMEOUT'
      })
      expect(Date.now() - started).toBeLessThan(2_000)
    } finally {
      await agent.destroy()
    }
  })
})
