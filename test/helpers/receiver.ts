/**
 * A real webhook receiver for tests: a node:http server on 127.0.0.1 (port 0) that records every request and
 * answers from a script a test can change at any moment: queued answers first, one per request in arrival order,
 * then the default. `hang: true` never answers (until close()), so the sender's timeout is what ends the attempt.
 */
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'

export interface Answer {
  status: number
  headers?: Record<string, string>
  body?: string
  /** Never answer; the socket stays open until the receiver closes. */
  hang?: boolean
}

export interface Received {
  method: string
  /** The request target as sent (path and query). */
  path: string
  headers: IncomingHttpHeaders
  /** The body exactly as it arrived, as a UTF-8 string. */
  body: string
  /** Date.now() when the request's headers arrived. */
  at: number
  /** What this request was (or, for a hang, will never be) answered with. */
  answer: Answer
}

export class Receiver {
  readonly requests: Received[] = []
  private readonly queue: Answer[] = []
  private fallback: Answer = { status: 200 }
  private readonly sockets = new Set<Socket>()
  private readonly hung = new Set<ServerResponse>()
  private port = 0

  private constructor (private readonly server: Server) {}

  /** Listens on 127.0.0.1 on a free port. */
  static async start (): Promise<Receiver> {
    const server = createServer()
    const r = new Receiver(server)
    server.on('connection', socket => {
      r.sockets.add(socket)
      socket.on('close', () => r.sockets.delete(socket))
    })
    server.on('request', (req, res) => {
      const at = Date.now()
      const answer = r.queue.shift() ?? r.fallback
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        r.requests.push({
          method: req.method ?? '',
          path: req.url ?? '',
          headers: req.headers,
          body: Buffer.concat(chunks).toString('utf8'),
          at,
          answer
        })
        if (answer.hang === true) {
          r.hung.add(res)
          res.on('close', () => r.hung.delete(res))
          return
        }
        res.writeHead(answer.status, answer.headers)
        res.end(answer.body ?? '')
      })
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => { server.off('error', reject); resolve() })
    })
    r.port = (server.address() as { port: number }).port
    return r
  }

  /** http://127.0.0.1:<port><path> */
  url (path = '/hook'): string {
    return `http://127.0.0.1:${this.port}${path}`
  }

  /** Queues answers for the next requests, in order, after any already queued. */
  script (...answers: Answer[]): this {
    this.queue.push(...answers)
    return this
  }

  /** The answer once the queue is empty (initially 200). Also drops any queued answers when `clear` is set. */
  answerAlways (answer: Answer, opts: { clear?: boolean } = {}): this {
    this.fallback = answer
    if (opts.clear === true) this.queue.length = 0
    return this
  }

  /** The requests received on a path (without query), all paths when omitted. */
  on (path?: string): Received[] {
    return path === undefined ? [...this.requests] : this.requests.filter(r => r.path.split('?')[0] === path)
  }

  /** Polls (≤ timeoutMs, every 25 ms) until `n` requests reached `path`; returns what arrived either way. */
  async waitFor (n: number, opts: { path?: string, timeoutMs?: number } = {}): Promise<Received[]> {
    const deadline = Date.now() + (opts.timeoutMs ?? 5000)
    while (this.on(opts.path).length < n && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 25))
    return this.on(opts.path)
  }

  /** Stops listening and destroys every open socket, hung ones included. */
  async close (): Promise<void> {
    const closed = new Promise<void>(resolve => this.server.close(() => resolve()))
    for (const res of this.hung) res.destroy()
    for (const socket of this.sockets) socket.destroy()
    this.server.closeAllConnections()
    await closed
  }
}
