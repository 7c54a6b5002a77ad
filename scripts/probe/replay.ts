/**
 * What the gateway's own code makes of an answer: each answer the probe received is served again, byte for byte,
 * by a loopback server to a real CometApiAdapter (src/upstream/cometapi.ts), and the adapter's verdict (a task,
 * "not found", or an UpstreamError with `retryable` and `maybeCreated`) is the evidence. Nothing of the adapter's
 * reading is copied here, so the probe cannot drift from the code it checks.
 */
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { CometApiAdapter } from '../../src/upstream/cometapi.ts'
import { UpstreamError, type UpstreamTask } from '../../src/upstream/client.ts'
import type { Exchange } from './http.ts'

export type Reading =
  | { kind: 'task', task: UpstreamTask }
  | { kind: 'not-found' }
  /** No answer at all (a reset, a timeout): nothing for the adapter to read. */
  | { kind: 'no-answer', error: string }
  | {
    kind: 'error',
    code: string,
    retryable: boolean,
    maybeCreated: boolean,
    retryAfterMs: number | null,
    message: string
  }

/** The headers the adapter reads besides the body; the rest of an answer does not change its verdict. */
const REPLAYED = ['content-type', 'retry-after']

export class Replay {
  #server: Server | null = null
  #adapter: CometApiAdapter | null = null
  #current: Exchange | null = null
  #queue: Promise<unknown> = Promise.resolve()

  async start (): Promise<void> {
    const server = createServer((req, res) => {
      req.resume()
      req.on('end', () => {
        const ex = this.#current
        if (ex === null || ex.status === null) { res.destroy(); return }
        const headers: Record<string, string> = {}
        for (const name of REPLAYED) if (ex.headers[name] !== undefined) headers[name] = ex.headers[name]
        res.writeHead(ex.status, headers)
        res.end(ex.raw)
      })
    })
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
    this.#server = server
    const { port } = server.address() as AddressInfo
    this.#adapter = new CometApiAdapter({ baseUrl: `http://127.0.0.1:${port}`, apiKey: 'probe-replay', timeoutMs: 5000 })
  }

  /** What `CometApiAdapter.create` makes of this answer to a create that sent `externalTaskId`. */
  async create (ex: Exchange, externalTaskId: string | null): Promise<Reading> {
    const body = externalTaskId === null ? {} : { external_task_id: externalTaskId }
    return await this.#read(ex, async adapter => await adapter.create('multi-image2video', body))
  }

  /** What `CometApiAdapter.query` makes of this answer. */
  async query (ex: Exchange): Promise<Reading> {
    return await this.#read(ex, async adapter => await adapter.query('multi-image2video', 'replayed'))
  }

  async close (): Promise<void> {
    await this.#adapter?.close()
    const server = this.#server
    if (server !== null) await new Promise<void>(resolve => server.close(() => resolve()))
  }

  /** One replay at a time: the server answers with the one answer being read. */
  async #read (ex: Exchange, call: (adapter: CometApiAdapter) => Promise<UpstreamTask | null>): Promise<Reading> {
    const adapter = this.#adapter
    if (adapter === null) throw new Error('replay: not started')
    if (ex.status === null) return { kind: 'no-answer', error: ex.error ?? 'no answer' }
    const run = async (): Promise<Reading> => {
      this.#current = ex
      try {
        const task = await call(adapter)
        return task === null ? { kind: 'not-found' } : { kind: 'task', task }
      } catch (err) {
        if (!(err instanceof UpstreamError)) throw err
        const { code, retryable, maybeCreated, retryAfterMs, message } = err
        return { kind: 'error', code, retryable, maybeCreated, retryAfterMs, message }
      }
    }
    const next = this.#queue.then(run, run)
    this.#queue = next.catch(() => {})
    return await next
  }
}

/** A reading in a few words, for a report line. */
export function describeReading (r: Reading): string {
  if (r.kind === 'not-found') return 'the adapter reads "no such task" (null)'
  if (r.kind === 'no-answer') return `no answer (${r.error})`
  if (r.kind === 'task') return `the adapter reads task ${r.task.taskId} (${r.task.status})`
  const wait = r.retryAfterMs === null ? '' : `, waits ${r.retryAfterMs} ms`
  const created = r.maybeCreated ? ', may have created' : ''
  return `the adapter reads ${r.code} (${r.retryable ? 'retried' : 'final'}${created}${wait})`
}
