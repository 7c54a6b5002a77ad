/**
 * The seam between the gateway and whoever makes the videos. The jobs (submit, reconcile) only know this interface:
 * create a task of a kind, ask for one by its upstream id or our external id, close. Each adapter owns its auth,
 * base URL, paths and error table; the HTTP mechanics they share are in client.ts.
 *
 * Adapters: `cometapi` (CometAPI's `/kling/...` routes, Bearer key), `kling` (Kling's own API, a JWT from an access
 * key and secret) and `simulator` (development: CometAPI's wire against the in-process simulator). src/upstream/
 * factory.ts picks one from UPSTREAM.
 */
import type { UpstreamName } from '../config/index.ts'
import type { VideoKind } from '../domain/kinds.ts'
import {
  isSuccessCode, requestIdOf, UpstreamError, UpstreamHttp, type HttpOptions, type Op, type Received
} from './client.ts'
import { idString, isObject, parseTask, type UpstreamTask } from './schemas.ts'

/**
 * A create body too large to build as one string (4 × 10 MB of images is 56 MB of JSON): its exact length and its
 * bytes, read as they are sent (src/jobs/submit.ts streams the parked images into it).
 */
export interface StreamedBody {
  readonly externalTaskId: string
  readonly length: number
  /** Strings are sent as UTF-8; `length` counts bytes. */
  chunks: () => AsyncIterable<Buffer | string>
}

export const isStreamed = (body: Record<string, unknown> | StreamedBody): body is StreamedBody =>
  typeof body.chunks === 'function' && typeof body.length === 'number'

export interface UpstreamAdapter {
  readonly name: UpstreamName
  /** Where it sends requests (no credentials), for logs. */
  readonly baseUrl: string
  /**
   * Creates an upstream task of `kind` from `body` (the upstream body: callback_url and external_task_id already in
   * it). Resolves only when upstream certainly made the task; otherwise an UpstreamError.
   */
  create: (kind: VideoKind, body: Record<string, unknown> | StreamedBody) => Promise<UpstreamTask>
  /** The task of `kind` upstream knows as `id` (its task id or our external_task_id); null when it knows none. */
  query: (kind: VideoKind, id: string) => Promise<UpstreamTask | null>
  close: () => Promise<void>
}

/**
 * An adapter for an upstream that speaks Kling's wire: `{code, message, request_id, data}` envelopes, a create path
 * per kind and a query at `<path>/<id>`. CometAPI relays Kling's wire, so both real adapters are one of these; a
 * subclass says where (path), who we are (authorization) and what its errors mean (classify, isNotFound).
 */
export abstract class KlingWireAdapter implements UpstreamAdapter {
  abstract readonly name: UpstreamName
  protected readonly http: UpstreamHttp

  constructor (opts: HttpOptions) {
    this.http = new UpstreamHttp(opts, () => this.secrets())
  }

  get baseUrl (): string { return this.http.baseUrl }
  get timeoutMs (): number { return this.http.timeoutMs }

  /** The create path of `kind`, under the base URL. */
  protected abstract path (kind: VideoKind): string
  /** The Authorization header's value for the next request. */
  protected abstract authorization (): string
  /** Every string that must never appear in an error message (keys, tokens). */
  protected abstract secrets (): string[]
  /** A response that is not a success, as an UpstreamError. */
  protected abstract classify (op: Op, res: Received): UpstreamError
  /** Upstream's "no such task" answer to a query. */
  protected abstract isNotFound (res: Received): boolean

  /**
   * POST <path>. Success only when HTTP 2xx AND either Kling's envelope with `code === 0` and a non-empty
   * `data.task_id` (a string, or a number turned into one), or an OpenAI-video-style task with no `code` at all
   * (`{id, task_id, object: "video", status, …}`, as new-api gateways answer: the id is `task_id`, else `id`).
   */
  async create (kind: VideoKind, body: Record<string, unknown> | StreamedBody): Promise<UpstreamTask> {
    const res = await this.send('create', 'POST', this.path(kind), isStreamed(body) ? body : JSON.stringify(body))
    const json = res.json
    const is2xx = res.status >= 200 && res.status < 300
    const bare = is2xx && isObject(json) && json.code === undefined && (json.error === undefined || json.error === null)
    const ok = isObject(json) && (bare || (isSuccessCode(json.code) && !isObject(json.error)))
    if (!ok || !is2xx) throw this.classify('create', res)
    const data = bare ? json : isObject(json.data) ? json.data : {}
    const taskId = bare ? idString(json.task_id) ?? idString(json.id) : idString(data.task_id)
    if (taskId === null) {
      throw this.http.error('create', {
        code: 'UPSTREAM_NO_TASK_ID',
        message: 'upstream reported success without a task id',
        retryable: true,
        maybeCreated: true,
        httpStatus: res.status,
        requestId: requestIdOf(json)
      })
    }
    const parsed = parseTask({ ...data, task_id: taskId })
    const external = isStreamed(body) ? body.externalTaskId : body.external_task_id
    const bodyExternal = typeof external === 'string' ? external : null
    return {
      taskId,
      status: parsed?.status ?? 'submitted',
      statusMsg: parsed?.statusMsg ?? null,
      externalTaskId: parsed?.externalTaskId ?? bodyExternal,
      videos: parsed?.videos ?? [],
      createdAt: parsed?.createdAt ?? null,
      updatedAt: parsed?.updatedAt ?? null
    }
  }

  /** GET <path>/{id}; `id` is a task id or an external_task_id. Null when upstream says there is no such task. */
  async query (kind: VideoKind, id: string): Promise<UpstreamTask | null> {
    if (typeof id !== 'string' || id.length === 0 || id.length > 256) {
      const message = 'task id must be a non-empty string of at most 256 characters'
      throw new UpstreamError({ code: 'UPSTREAM_BAD_ID', message, retryable: false })
    }
    const res = await this.send('query', 'GET', `${this.path(kind)}/${encodeURIComponent(id)}`, undefined)
    const json = res.json
    // new-api's wrapper says `code: "success"`; Kling's says 0.
    const success = isObject(json) && !isObject(json.error) &&
      (json.code === undefined || isSuccessCode(json.code) || json.code === 'success')
    if (res.status >= 200 && res.status < 300 && success) {
      const task = parseTask(json)
      if (task !== null) return task
      throw this.http.error('query', {
        code: 'UPSTREAM_BAD_RESPONSE',
        message: 'upstream answered without a recognisable task',
        retryable: false,
        httpStatus: res.status,
        requestId: requestIdOf(json)
      })
    }
    if (this.isNotFound(res)) return null
    throw this.classify('query', res)
  }

  async close (): Promise<void> {
    await this.http.close()
  }

  private async send (op: Op, method: 'GET' | 'POST', path: string, body: string | StreamedBody | undefined):
  Promise<Received> {
    return await this.http.send(op, method, path, body, { authorization: this.authorization() })
  }
}
