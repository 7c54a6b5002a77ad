/**
 * A loopback TCP proxy between gateway replicas and Redis (Toxiproxy is not available here), with knobs:
 * - `latencyMs`: every command and every reply waits this long;
 * - `hold(rule)`: the next `count` commands a rule matches wait `holdMs` before they reach Redis. A connection is
 *   one ordered stream, so everything sent after a held command on that connection waits behind it, as behind a
 *   slow link. Held past the client's command timeout, the command fails on the client and then runs anyway:
 *   "a command that times out on the client but runs late";
 * - `dropConnections()`: destroys every open connection (both sides), as a network reset would;
 * - `blackhole(true)`: nothing moves in either direction, and new connections are accepted but not forwarded, until
 *   `blackhole(false)`, as a partition that later heals (TCP would have kept the bytes, so they are kept, not lost).
 * RESP is parsed only far enough to find command boundaries and read the first few arguments for matching.
 */
import { connect, createServer, type Server, type Socket } from 'node:net'

const HOST = '127.0.0.1'
/** Arguments decoded as text for matching; the rest of a command (image bytes, say) is only skipped over. */
const DECODED_ARGS = 8

export interface HoldRule {
  name: string
  /** Gets the command name upper-cased and up to 7 more arguments as text. */
  match: (args: string[]) => boolean
  /** How many matching commands to hold (then the rule is spent). */
  count: number
  holdMs: number
}

export interface HoldRecord { rule: string, command: string, at: number, releasedAt: number | null }

interface Pending { raw: Buffer, releaseAt: number }

/** Finds one complete RESP command at the start of `buf`: its length in bytes and its first arguments, or null. */
export function parseCommand (buf: Buffer): { length: number, args: string[] } | null {
  if (buf.length === 0) return null
  if (buf[0] !== 0x2a) {
    // An inline command (not what ioredis sends): one line.
    const end = buf.indexOf('\r\n')
    return end < 0 ? null : { length: end + 2, args: buf.subarray(0, end).toString().split(' ') }
  }
  let pos = buf.indexOf('\r\n')
  if (pos < 0) return null
  const count = Number(buf.subarray(1, pos).toString())
  pos += 2
  const args: string[] = []
  for (let i = 0; i < count; i++) {
    if (pos >= buf.length) return null
    if (buf[pos] !== 0x24) throw new Error(`not a bulk string at byte ${pos}`)
    const lineEnd = buf.indexOf('\r\n', pos)
    if (lineEnd < 0) return null
    const len = Number(buf.subarray(pos + 1, lineEnd).toString())
    const start = lineEnd + 2
    if (start + len + 2 > buf.length) return null
    if (i < DECODED_ARGS) args.push(buf.subarray(start, start + Math.min(len, 200)).toString())
    pos = start + len + 2
  }
  if (args.length > 0) args[0] = args[0].toUpperCase()
  return { length: pos, args }
}

/** One client connection and its upstream connection, with ordered, individually delayed forwarding. */
class Pipe {
  private readonly server: Socket
  private inbound: Buffer = Buffer.alloc(0)
  private readonly toServer: Pending[] = []
  private readonly toClient: Pending[] = []
  private lastToServer = 0
  private lastToClient = 0
  private timer?: NodeJS.Timeout
  private opaque = false
  closed = false

  constructor (
    private readonly proxy: RedisProxy,
    private readonly client: Socket,
    target: { host: string, port: number }
  ) {
    this.server = connect(target.port, target.host)
    this.server.setNoDelay(true)
    client.setNoDelay(true)
    client.on('data', chunk => this.fromClient(chunk))
    this.server.on('data', chunk => this.enqueue(this.toClient, chunk, Date.now() + proxy.latencyMs, 'client'))
    const end = () => this.close()
    for (const s of [client, this.server]) {
      s.on('error', end)
      s.on('close', end)
    }
  }

  private fromClient (chunk: Buffer): void {
    if (this.opaque) { this.enqueue(this.toServer, chunk, Date.now() + this.proxy.latencyMs, 'server'); return }
    this.inbound = this.inbound.length === 0 ? chunk : Buffer.concat([this.inbound, chunk])
    for (;;) {
      let parsed: ReturnType<typeof parseCommand>
      try {
        parsed = parseCommand(this.inbound)
      } catch {
        // Not RESP we understand: forward the rest as it comes, unparsed, in order.
        this.opaque = true
        this.enqueue(this.toServer, this.inbound, Date.now() + this.proxy.latencyMs, 'server')
        this.inbound = Buffer.alloc(0)
        return
      }
      if (parsed === null) return
      const raw = this.inbound.subarray(0, parsed.length)
      this.inbound = this.inbound.subarray(parsed.length)
      const held = this.proxy.holdFor(parsed.args)
      this.enqueue(this.toServer, Buffer.from(raw), Date.now() + (held ?? this.proxy.latencyMs), 'server')
    }
  }

  /** Queues bytes for one direction; nothing overtakes what was queued before it on the same connection. */
  private enqueue (queue: Pending[], raw: Buffer, releaseAt: number, to: 'server' | 'client'): void {
    if (to === 'server') {
      this.lastToServer = Math.max(this.lastToServer, releaseAt)
      queue.push({ raw, releaseAt: this.lastToServer })
    } else {
      this.lastToClient = Math.max(this.lastToClient, releaseAt)
      queue.push({ raw, releaseAt: this.lastToClient })
    }
    this.flush()
  }

  flush (): void {
    if (this.closed) return
    clearTimeout(this.timer)
    this.timer = undefined
    if (this.proxy.blackholed) return
    const now = Date.now()
    for (const [queue, socket] of [[this.toServer, this.server], [this.toClient, this.client]] as const) {
      while (queue.length > 0 && queue[0].releaseAt <= now) socket.write((queue.shift() as Pending).raw)
    }
    const next = Math.min(this.toServer[0]?.releaseAt ?? Infinity, this.toClient[0]?.releaseAt ?? Infinity)
    if (next !== Infinity) this.timer = setTimeout(() => this.flush(), Math.max(1, next - now))
  }

  close (): void {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.timer)
    this.client.destroy()
    this.server.destroy()
    this.proxy.forget(this)
  }
}

export class RedisProxy {
  latencyMs = 0
  blackholed = false
  readonly holds: HoldRecord[] = []
  connections = 0
  private readonly rules: HoldRule[] = []
  private readonly pipes = new Set<Pipe>()
  private readonly waiting = new Set<Socket>()
  private server?: Server
  port = 0

  constructor (private target: { host: string, port: number }) {}

  static async start (target: { host?: string, port: number }): Promise<RedisProxy> {
    const proxy = new RedisProxy({ host: target.host ?? HOST, port: target.port })
    await proxy.listen()
    return proxy
  }

  get url (): string { return `redis://${HOST}:${this.port}` }

  private async listen (): Promise<void> {
    const server = createServer(client => {
      this.connections++
      client.on('error', () => {})
      if (this.blackholed) {
        // Accepted, but connected onwards only when the partition heals.
        this.waiting.add(client)
        client.pause()
        client.once('close', () => this.waiting.delete(client))
        return
      }
      this.pipes.add(new Pipe(this, client, this.target))
    })
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, HOST, () => resolve())
    })
    this.port = (server.address() as { port: number }).port
  }

  /** Where new connections go from now on (existing ones keep their upstream). */
  setTarget (port: number, host = HOST): void { this.target = { host, port } }

  /** Arms a rule: the next `count` commands it matches are held `holdMs`. */
  hold (rule: HoldRule): void { this.rules.push({ ...rule }) }

  /** The delay for a command, when a rule takes it; records the hold. */
  holdFor (args: string[]): number | undefined {
    const rule = this.rules.find(r => r.count > 0 && r.match(args))
    if (rule === undefined) return undefined
    rule.count--
    const command = args.slice(0, 4).join(' ').slice(0, 160)
    const record: HoldRecord = { rule: rule.name, command, at: Date.now(), releasedAt: null }
    this.holds.push(record)
    setTimeout(() => { record.releasedAt = Date.now() }, rule.holdMs).unref()
    return rule.holdMs
  }

  /** Rules with holds left (so a scenario can tell whether its fault happened at all). */
  armed (): number { return this.rules.reduce((n, r) => n + r.count, 0) }

  /** Destroys every open connection; returns how many. */
  dropConnections (): number {
    const n = this.pipes.size + this.waiting.size
    for (const pipe of [...this.pipes]) pipe.close()
    for (const s of this.waiting) s.destroy()
    this.waiting.clear()
    return n
  }

  blackhole (on: boolean): void {
    this.blackholed = on
    if (on) return
    for (const client of [...this.waiting]) {
      this.waiting.delete(client)
      this.pipes.add(new Pipe(this, client, this.target))
      client.resume()
    }
    for (const pipe of this.pipes) pipe.flush()
  }

  forget (pipe: Pipe): void { this.pipes.delete(pipe) }

  async close (): Promise<void> {
    this.dropConnections()
    await new Promise<void>(resolve => this.server === undefined ? resolve() : this.server.close(() => resolve()))
  }
}

/**
 * Matches the gateway's own task scripts (EVALSHA, or EVAL after NOSCRIPT) with `numkeys` keys whose first key is a
 * task hash: `create-16` has 16, `transition-13` has 13 (`openKey`, when given, also checks where the open set
 * is). BullMQ's scripts have 9- and 11-key ones too, on `{prefix}:<queue>:…`.
 */
export const taskScript = (numkeys: number, openKey?: number) => (args: string[]) =>
  (args[0] === 'EVALSHA' || args[0] === 'EVAL') && args[2] === String(numkeys) &&
  /^\{[^}]+\}:task:[^:]+$/.test(args[3] ?? '') && /^\{[^}]+\}:task:[^:]+:events$/.test(args[4] ?? '') &&
  (openKey === undefined || (args[2 + openKey] ?? '').endsWith(':open'))

/**
 * Matches the read of an Idempotency-Key's record that answers a retry:
 * `HMGET {prefix}:idem:… fingerprint task_id`.
 */
export const idempotencyRead = (args: string[]) =>
  args[0] === 'HMGET' && args[1]?.includes(':idem:') === true
