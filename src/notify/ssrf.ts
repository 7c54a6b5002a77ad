/**
 * SSRF guard for outbound requests to URLs a caller chose: webhooks and result downloads (docs/API.md, "SSRF").
 *
 * Two layers:
 * - at registration, `checkWebhookTarget` checks the URL's shape and every address its host resolves to;
 * - at every connection, the agent from `createGuardedAgent` checks again: IP-literal hosts in its `connect` wrapper
 *   (net/tls.connect never call `lookup` for them), names in `guardedLookup`, which checks the addresses that the
 *   socket will actually use. A name re-pointed at 127.0.0.1 after registration (DNS rebinding) is therefore refused.
 *
 * Redirects are never followed: undici's `request`/`dispatch` do not follow them unless a redirect interceptor is
 * composed in, and this module composes none. A 3xx reaches the caller as a 3xx.
 *
 * `allowPrivate` turns every address and name check off and also allows http. It exists for tests and local
 * development on loopback only; the default config must keep it false.
 */
import dns from 'node:dns'
import net, { type LookupFunction } from 'node:net'
import { Agent, buildConnector } from 'undici'

/** How long registration waits for DNS before refusing the target. */
export const DNS_TIMEOUT_MS = 2_000

/** Why a target was refused; message safe to show the caller (it never holds an address we resolved). */
export class UnsafeTarget extends Error {
  readonly code = 'UNSAFE_WEBHOOK_TARGET'

  constructor (message: string) {
    super(message)
    this.name = 'UnsafeTarget'
  }
}

export interface SsrfOptions {
  /** Allow http, loopback/private addresses, internal names and any port. Tests and local development only. */
  allowPrivate: boolean
  /** The ports a webhook URL may name (WEBHOOK_ALLOWED_PORTS); DEFAULT_WEBHOOK_PORTS when not given. */
  allowedPorts?: readonly number[]
}

/** HTTPS and its common alternative: any other port would let a caller probe internal services' ports. */
export const DEFAULT_WEBHOOK_PORTS: readonly number[] = [443, 8443]

/**
 * The one message for a target that is refused, whatever the reason (http, private address, internal name, no DNS
 * answer, port), at registration and at delivery: telling them apart would tell a caller which internal names exist
 * and which resolve. It names the settings that allow such a target, so whoever runs a local receiver knows the fix.
 */
export const CANNOT_USE = 'webhook URL cannot be used: it must be https, its host must resolve to public addresses ' +
  'only and its port be one of WEBHOOK_ALLOWED_PORTS (default 443, 8443); WEBHOOK_ALLOW_PRIVATE=true allows http, ' +
  'private and loopback hosts and any port (local development, on-prem)'

const v4Forbidden = new net.BlockList()
for (const [prefix, bits] of [
  ['0.0.0.0', 8], // "this network", unspecified
  ['10.0.0.0', 8], // private
  ['100.64.0.0', 10], // CGNAT shared address space
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local, cloud metadata 169.254.169.254
  ['172.16.0.0', 12], // private
  ['192.0.0.0', 24], // IETF protocol assignments
  ['192.0.2.0', 24], // TEST-NET-1 (documentation, never routed)
  ['192.88.99.0', 24], // deprecated 6to4 relay anycast (RFC 7526)
  ['192.168.0.0', 16], // private
  ['198.18.0.0', 15], // benchmarking
  ['198.51.100.0', 24], // TEST-NET-2
  ['203.0.113.0', 24], // TEST-NET-3
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4] // reserved, includes broadcast 255.255.255.255
] as const) v4Forbidden.addSubnet(prefix, bits, 'ipv4')

const v6Forbidden = new net.BlockList()
for (const [prefix, bits] of [
  ['::', 96], // ::, ::1 and the deprecated IPv4-compatible ::a.b.c.d, all refused whatever the embedded v4
  ['::ffff:0:0:0', 96], // IPv4-translated (SIIT)
  ['64:ff9b::', 96], // well-known NAT64: a webhook names its IPv4 host itself, never through a translator
  ['64:ff9b:1::', 48], // local-use NAT64 (RFC 8215)
  ['100::', 64], // discard-only
  ['2001:2::', 48], // benchmarking
  ['2001:db8::', 32], // documentation
  ['fc00::', 7], // unique local, includes fd00:ec2::254 (AWS metadata over IPv6)
  ['fe80::', 10], // link-local
  ['fec0::', 10], // deprecated site-local
  ['ff00::', 8] // multicast
] as const) v6Forbidden.addSubnet(prefix, bits, 'ipv6')

function stripBrackets (host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
}

/** The eight 16-bit words of a valid IPv6 address (zone id already removed), dotted-quad tails included. */
function ipv6Words (ip: string): number[] {
  let s = ip
  const lastColon = s.lastIndexOf(':')
  const tail = s.slice(lastColon + 1)
  if (tail.includes('.')) {
    const [a, b, c, d] = tail.split('.').map(Number)
    s = `${s.slice(0, lastColon + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [head, rest] = s.split('::') as [string, string | undefined]
  const parse = (part: string): number[] => part === '' ? [] : part.split(':').map(h => parseInt(h, 16))
  const left = parse(head)
  if (rest === undefined) return left
  const right = parse(rest)
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right]
}

function v4FromWords (hi: number, lo: number): string {
  return `${hi >>> 8}.${hi & 0xff}.${lo >>> 8}.${lo & 0xff}`
}

function isForbiddenV4 (ip: string): boolean {
  return v4Forbidden.check(ip, 'ipv4')
}

/**
 * True for addresses a webhook must never reach: loopback, unspecified, private, link-local (cloud metadata), CGNAT,
 * ULA, multicast, broadcast, reserved, documentation and benchmarking ranges. IPv6 forms that embed an IPv4 address
 * (mapped ::ffff:a.b.c.d in dotted or hex form, 6to4 2002::/16, Teredo 2001::/32) are judged by the embedded
 * address; NAT64 (64:ff9b::/96) is refused whatever it embeds. Anything that is not a plain IP address by
 * `net.isIP` (e.g. '0x7f.1', '2130706433', '127.1') is refused too: callers pass `new URL().hostname` (which
 * normalises those forms) or resolver output.
 */
export function isForbiddenAddress (ip: string): boolean {
  let s = stripBrackets(ip.trim())
  const version = net.isIP(s)
  if (version === 4) return isForbiddenV4(s)
  if (version !== 6) return true
  const zone = s.indexOf('%')
  if (zone !== -1) s = s.slice(0, zone)
  if (v6Forbidden.check(s, 'ipv6')) return true
  const w = ipv6Words(s)
  // IPv4-mapped ::ffff:a.b.c.d
  if (w[0] === 0 && w[1] === 0 && w[2] === 0 && w[3] === 0 && w[4] === 0 && w[5] === 0xffff) {
    return isForbiddenV4(v4FromWords(w[6], w[7]))
  }
  // NAT64 well-known prefix 64:ff9b::/96
  if (w[0] === 0x64 && w[1] === 0xff9b && w[2] === 0 && w[3] === 0 && w[4] === 0 && w[5] === 0) {
    return isForbiddenV4(v4FromWords(w[6], w[7]))
  }
  // 6to4 2002:aabb:ccdd::/48
  if (w[0] === 0x2002) return isForbiddenV4(v4FromWords(w[1], w[2]))
  // Teredo 2001:0::/32: the client's IPv4 is the last 32 bits, inverted
  if (w[0] === 0x2001 && w[1] === 0) return isForbiddenV4(v4FromWords(w[6] ^ 0xffff, w[7] ^ 0xffff))
  return false
}

/** Names that only mean something inside a network (also judged for PUBLIC_BASE_URL, src/config). */
export function isInternalName (hostname: string): boolean {
  const name = hostname.toLowerCase().replace(/\.+$/, '')
  return name === 'localhost' ||
    name.endsWith('.localhost') ||
    name.endsWith('.local') ||
    name.endsWith('.internal') // includes metadata.google.internal
}

/**
 * Checks a URL's shape without any I/O: https only (http too when allowPrivate), no userinfo, a hostname; IP-literal
 * hosts must not be forbidden and internal names (localhost, *.localhost, *.local, *.internal) are refused, unless
 * allowPrivate; the port (443 when none is given) must be one of `allowedPorts`, unless allowPrivate. Throws
 * UnsafeTarget; returns the parsed URL.
 */
export function checkWebhookUrl (raw: string, opts: SsrfOptions): URL {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw new UnsafeTarget('webhook URL is not a valid absolute URL')
  }
  if (url.protocol !== 'https:' && !(opts.allowPrivate && url.protocol === 'http:')) {
    throw new UnsafeTarget(opts.allowPrivate ? 'webhook URL must use http or https' : CANNOT_USE)
  }
  if (url.username !== '' || url.password !== '') {
    throw new UnsafeTarget('webhook URL must not contain a username or password')
  }
  const host = stripBrackets(url.hostname)
  if (host === '') throw new UnsafeTarget('webhook URL must have a host')
  if (opts.allowPrivate) return url
  const port = url.port === '' ? 443 : Number(url.port)
  if (!(opts.allowedPorts ?? DEFAULT_WEBHOOK_PORTS).includes(port)) throw new UnsafeTarget(CANNOT_USE)
  if (net.isIP(host) !== 0 ? isForbiddenAddress(host) : isInternalName(host)) throw new UnsafeTarget(CANNOT_USE)
  return url
}

/**
 * checkWebhookUrl plus DNS (all addresses, DNS_TIMEOUT_MS): refuses when any resolved address is forbidden, or when
 * the name does not resolve in time. Used at registration. With allowPrivate there is nothing to refuse, so no DNS.
 */
export async function checkWebhookTarget (raw: string, opts: SsrfOptions): Promise<URL> {
  const url = checkWebhookUrl(raw, opts)
  const host = stripBrackets(url.hostname)
  if (opts.allowPrivate || net.isIP(host) !== 0) return url
  let timer: NodeJS.Timeout | undefined
  let addresses: dns.LookupAddress[]
  try {
    addresses = await Promise.race([
      dns.promises.lookup(host, { all: true }),
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new UnsafeTarget(CANNOT_USE)), DNS_TIMEOUT_MS)
        timer.unref()
      })
    ])
  } catch (err) {
    if (err instanceof UnsafeTarget) throw err
    throw new UnsafeTarget(CANNOT_USE)
  } finally {
    clearTimeout(timer)
  }
  if (addresses.length === 0 || addresses.some(a => isForbiddenAddress(a.address))) {
    throw new UnsafeTarget(CANNOT_USE)
  }
  return url
}

/**
 * A `lookup` for net/tls.connect (undici `connect: { lookup }`): resolves every address with dns.lookup and fails the
 * connection with UnsafeTarget when any of them is forbidden (unless allowPrivate). Otherwise answers in the shape
 * the caller asked for: the array when `options.all`, else the first address and its family. Because the socket
 * connects to exactly what this returns, a check here cannot be raced by DNS rebinding.
 */
export function guardedLookup (opts: SsrfOptions): LookupFunction {
  return (hostname, options, callback) => {
    const done = (err: NodeJS.ErrnoException | null, addresses: dns.LookupAddress[]): void => {
      if (err !== null) {
        callback(err, '')
        return
      }
      if (addresses.length === 0) {
        callback(Object.assign(new Error(`lookup ${hostname} returned no addresses`), { code: 'ENOTFOUND' }), '')
        return
      }
      if (!opts.allowPrivate && addresses.some(a => isForbiddenAddress(a.address))) {
        callback(new UnsafeTarget(CANNOT_USE), '')
        return
      }
      if (options.all === true) callback(null, addresses)
      else callback(null, addresses[0].address, addresses[0].family)
    }
    try {
      dns.lookup(hostname, { ...options, all: true }, done)
    } catch (err) {
      process.nextTick(callback, err as Error, '')
    }
  }
}

/**
 * An undici Agent for every outbound request to a place a caller or upstream named (webhook deliveries, result
 * downloads). Every connection goes through the SSRF checks: a forbidden IP-literal
 * host is refused in the `connect` wrapper before any socket is opened, and names go through `guardedLookup`.
 * `timeoutMs` bounds connect, headers and each body read. Redirects are not followed (no redirect interceptor).
 * The URL's shape (https, userinfo, internal names) is checkWebhookUrl's job, not the agent's.
 */
export function createGuardedAgent (opts: SsrfOptions & { timeoutMs: number }): Agent {
  const ssrf: SsrfOptions = { allowPrivate: opts.allowPrivate }
  const connector = buildConnector({ timeout: opts.timeoutMs, lookup: guardedLookup(ssrf) })
  return new Agent({
    headersTimeout: opts.timeoutMs,
    bodyTimeout: opts.timeoutMs,
    connectTimeout: opts.timeoutMs,
    connect: (options, callback) => {
      const host = stripBrackets(options.hostname)
      if (!ssrf.allowPrivate && net.isIP(host) !== 0 && isForbiddenAddress(host)) {
        callback(new UnsafeTarget(CANNOT_USE), null)
        return
      }
      connector(options, callback)
    }
  })
}
