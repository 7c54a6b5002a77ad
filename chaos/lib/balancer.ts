/**
 * A small round-robin HTTP load balancer on loopback in front of the live gateway replicas: PUBLIC_BASE_URL
 * points here, so CometAPI's callbacks (and the load) still arrive when one replica is down.
 *
 * Like a real balancer it retries a request on the next replica only when the connection to a replica could not
 * be made (nothing reached it); a replica that fails mid-request makes it close the client's connection, so the
 * client sees what it would have seen talking to that replica directly (a reset), never a 502 of our own making.
 * Each request uses a fresh upstream connection, so "could not connect" is never confused with a stale keep-alive.
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'

const HOST = '127.0.0.1'
const MAX_BODY = 2 * 1024 * 1024
/** A replica that refused a connection is skipped for this long. */
const DOWN_FOR_MS = 1000

interface Backend { port: number, downUntil: number }

export class Balancer {
  private backends: Backend[] = []
  private next = 0
  private readonly sockets = new Set<Socket>()
  private server?: Server
  port = 0
  counts = { requests: 0, retried: 0, noBackend: 0, cutMidway: 0 }

  static async start (): Promise<Balancer> {
    const lb = new Balancer()
    const server = createServer((req, res) => { lb.handle(req, res) })
    lb.server = server
    server.on('connection', s => { lb.sockets.add(s); s.on('close', () => lb.sockets.delete(s)) })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, HOST, () => resolve())
    })
    lb.port = (server.address() as { port: number }).port
    return lb
  }

  get origin (): string { return `http://${HOST}:${this.port}` }

  /** The replicas requests may go to (the harness removes one it is about to kill, and adds it back once ready). */
  setBackends (ports: number[]): void {
    this.backends = ports.map(port => this.backends.find(b => b.port === port) ?? { port, downUntil: 0 })
  }

  private pick (tried: Set<number>): Backend | undefined {
    const now = Date.now()
    const candidates = this.backends.filter(b => !tried.has(b.port))
    const up = candidates.filter(b => b.downUntil <= now)
    const pool = up.length > 0 ? up : candidates
    if (pool.length === 0) return undefined
    this.next = (this.next + 1) % pool.length
    return pool[this.next]
  }

  private handle (req: IncomingMessage, res: ServerResponse): void {
    this.counts.requests++
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (c: Buffer) => {
      size += c.length
      if (size > MAX_BODY) { req.destroy(); return }
      chunks.push(c)
    })
    req.on('error', () => res.destroy())
    req.on('end', () => { this.forward(req, res, Buffer.concat(chunks), new Set()) })
  }

  private forward (req: IncomingMessage, res: ServerResponse, body: Buffer, tried: Set<number>): void {
    const backend = this.pick(tried)
    if (backend === undefined) {
      // Nothing could take it: the client sees a refused-like reset, as with no replica at all.
      this.counts.noBackend++
      res.destroy()
      return
    }
    tried.add(backend.port)
    let connected = false
    const headers = { ...req.headers, host: `${HOST}:${backend.port}`, connection: 'close' }
    const up = httpRequest({ host: HOST, port: backend.port, method: req.method, path: req.url, headers, agent: false })
    up.on('socket', s => s.once('connect', () => { connected = true }))
    up.on('response', upRes => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers)
      upRes.pipe(res)
      upRes.on('error', () => { this.counts.cutMidway++; res.destroy() })
    })
    up.on('error', () => {
      if (!connected && !res.headersSent) {
        backend.downUntil = Date.now() + DOWN_FOR_MS
        this.counts.retried++
        this.forward(req, res, body, tried)
        return
      }
      this.counts.cutMidway++
      res.destroy()
    })
    res.on('close', () => { if (!res.writableFinished) up.destroy() })
    up.end(body)
  }

  async close (): Promise<void> {
    const server = this.server
    const closed = new Promise<void>(resolve => server === undefined ? resolve() : server.close(() => resolve()))
    for (const s of this.sockets) s.destroy()
    await closed
  }
}
