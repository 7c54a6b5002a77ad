/**
 * A fake CometAPI and Kling for Kling's video endpoints (multi-image2video, image2video, text2video), over real
 * HTTP, on both path styles: CometAPI's `/kling/v1/videos/<kind>` (any Bearer key, or `apiKey`) and Kling's own
 * `/v1/videos/<kind>` (a JWT checked against `klingAccessKey`/`klingSecretKey` when given, Kling's 1001-1004
 * otherwise). Faithful to what docs/DESIGN.md, "Upstream: CometAPI's Kling route" (and the next section, on Kling's
 * own API) says of them: the `{code, message, request_id, data}` envelope, `succeed` spelling, numeric-string task
 * ids, ms timestamps, query by task id or external id (a miss is HTTP 400 code 1201), flat callback bodies POSTed to
 * `callback_url` on every status change, and both error shapes. Tests script it through `/_sim/*` (or the same methods
 * on the object) and count what it did.
 *
 * Beside Kling's own wire it speaks the other shapes gateways of the new-api family answer in (`SimShapes`, per run
 * or through `POST /_sim/shapes`): OpenAI-video-style create answers, a gateway's own alias ids, bare-number ids,
 * timestamps in seconds, new-api's flat `{code: "<word>"}` errors, no look-up by external id; and account states
 * (`POST /_sim/account`): balance exhausted, key revoked.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { randomInt, randomUUID, createHash, createHmac, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { request as undiciRequest } from 'undici'

export type SimStatus = 'submitted' | 'processing' | 'succeed' | 'failed'

export interface SimTask {
  task_id: string
  /** A gateway's own id for the task (new-api's `task_…`): what the create answers with under `aliasIds`. */
  alias: string
  /** The endpoint that made it (a query on another kind's path does not find it) and the path style it came in on. */
  kind: SimKind
  api: SimApi
  external_task_id: string | null
  callback_url: string | null
  status: SimStatus
  status_msg: string
  body: Record<string, unknown>
  created_at: number
  updated_at: number
  callbacks_sent: number
}

/** What to do to the next matching request(s). */
export interface SimFault {
  on: 'create' | 'query'
  kind:
  | 'http-error' // `status` with a comet_api_error body
  | 'rate-limit' // 429 + Retry-After: `retryAfter` seconds
  | 'kling-error' // `status` (default 400) with a Kling `{code, message}` body
  | 'reset' // the socket is destroyed before any response
  | 'hang' // headers never come
  | 'accept-then-hang' // create: the task is made, then the response never comes
  | 'accept-then-reset' // create: the task is made, then the socket is destroyed
  | 'accept-then-html' // create: the task is made, then the answer is an HTML 200 (an unreadable success)
  | 'not-found' // query: 400 / 1201 even if the task exists
  | 'status' // query: answer with `taskStatus` whatever the task's real state
  | 'html' // `status` (default 200) with an HTML page instead of JSON, as a wrong base URL gives
  | 'new-api-error' // `status` (default 400) with new-api's flat `{code: "<word>", message, data: null}`
  times?: number
  status?: number
  code?: number | string
  message?: string
  retryAfter?: number
  taskStatus?: SimStatus
}

/**
 * How callbacks are sent: lost, duplicated, reordered or late. `dropRatio` loses each callback with that
 * probability (0..1) on top of `drop`, which loses them all.
 */
export interface CallbackPolicy {
  drop: boolean
  duplicate: number
  delayMs: number
  reorder: boolean
  dropRatio?: number
}

/** The wire shapes the simulator answers in, beside Kling's own (the defaults). */
export interface SimShapes {
  /**
   * `kling`: Kling's envelope `{code: 0, data: {task_id, …}}`; `openai`: an OpenAI-video-style task with no `code`,
   * `{id, task_id, object: "video", status: "queued", progress, created_at}`.
   */
  create: 'kling' | 'openai'
  /**
   * The create answers with the gateway's own alias (`task_…`), not Kling's id: queries by either find the task,
   * and query answers and callbacks carry Kling's id (so a callback's id differs from the create's).
   */
  aliasIds: boolean
  /** Task ids as bare JSON numbers (`"task_id": 861…`), in create and query answers and callbacks. */
  numericIds: boolean
  /** `ms` (Kling's) or `s`: Unix seconds in `created_at`/`updated_at`. */
  timestamps: 'ms' | 's'
  /**
   * `comet`: CometAPI's `{error: {…}}` and Kling's `{code: <n>}`; `new-api`: the flat `{code: "<word>", message,
   * data: null}` (a query miss is 400 `task_not_exist`, an empty wallet 402 `insufficient_user_quota`).
   */
  errors: 'comet' | 'new-api'
  /** false: a query by an external id answers 404 (the look-up is unsupported), a task id still works. */
  externalLookup: boolean
}

export const DEFAULT_SHAPES: SimShapes = {
  create: 'kling', aliasIds: false, numericIds: false, timestamps: 'ms', errors: 'comet', externalLookup: true
}

/** The account's state: `balance` refuses every create (queries work), `key` refuses every request. */
export type SimAccount = 'ok' | 'balance' | 'key'

export interface SimOptions {
  /** Bearer key the simulator requires; any non-empty key when undefined. */
  apiKey?: string
  /** Kling's keys: with both set, Kling's routes take only a valid HS256 JWT (iss = access key, exp, nbf). */
  klingAccessKey?: string
  klingSecretKey?: string
  /** Automatic progress: submitted → processing after `processingAfterMs`, → terminal after `finishAfterMs`. */
  auto?: boolean
  processingAfterMs?: number
  finishAfterMs?: number
  outcome?: 'succeed' | 'failed'
  /** How long every create takes to answer (ms, default 0): a slow upstream, so the submit slots are the bottleneck. */
  createDelayMs?: number
  /** Share of tasks (0..1) that end `failed` whatever `outcome` says, so both terminal paths run under load. */
  failRatio?: number
  /**
   * URLs that expire: result URLs carry `x-expires` (Unix seconds: the task's last update + this) and `x-signature`,
   * and answer 403 past it, as a signed CDN URL does. Unset: plain URLs that never expire.
   */
  videoUrlTtlMs?: number
  logger?: boolean
  shapes?: Partial<SimShapes>
  account?: SimAccount
  /**
   * The control API (`/_sim/*` but the videos) from any peer; by default only loopback peers, because
   * `GET /_sim/state` shows each task's callback_url, whose token lets anyone post callbacks as the upstream.
   */
  openControl?: boolean
}

/**
 * The pace for people (`npm start` with no upstream, `npm run simulator`): long enough to watch a task go through
 * queued and processing (~20 s). The class's own defaults stay fast (200/600 ms) for tests that build it directly.
 */
export const DEMO_PACE = { processingAfterMs: 3000, finishAfterMs: 20_000 } as const

/**
 * Every task's video: a real H.264 MP4 (5 s, 320x240, ffmpeg's testsrc) kept in the repository, so a player opens
 * what the gateway copied. Read once, when the simulator module is first loaded (never in production).
 */
const SAMPLE_MP4 = readFileSync(new URL('./assets/sample.mp4', import.meta.url))

/** One create request as it arrived, and what became of it. */
export interface CreateRecord {
  at: number
  externalTaskId: string | null
  /** The prompt sent: load generators put their own request key in it, to map upstream tasks back to requests. */
  prompt: string | null
  /** The upstream task made for it, or null when a fault, auth or validation refused it. */
  taskId: string | null
  /**
   * SHA-256 of each Base64 image as decoded here (the image list's, then `image`, `image_tail`, `static_mask`,
   * the dynamic masks'), so tests can check the images arrived byte for byte.
   */
  imageSha256: string[]
}

/** The Base64 images of a create body, in the order CreateRecord.imageSha256 lists them. */
function base64Images (body: Record<string, unknown>): string[] {
  const listed = (list: unknown, field: string) => Array.isArray(list)
    ? list.map(item => typeof item === 'object' && item !== null ? (item as Record<string, unknown>)[field] : undefined)
    : []
  const all = [...listed(body.image_list, 'image'), body.image, body.image_tail, body.static_mask,
    ...listed(body.dynamic_masks, 'mask')]
  return all.filter((v): v is string => typeof v === 'string' && !/^https?:\/\//i.test(v))
}

const PATH = '/kling/v1/videos/multi-image2video'
const MAX_HANG_MS = 120_000

/** Kling's video endpoints the simulator fakes, each on both path styles. */
export const SIM_KINDS = ['multi-image2video', 'image2video', 'text2video'] as const
export type SimKind = typeof SIM_KINDS[number]
export type SimApi = 'cometapi' | 'kling'
export interface SimRoute { api: SimApi, kind: SimKind }
/** The options in force: the defaults filled in; the keys stay optional (none = any Bearer value). */
type SimSettings = Required<Omit<SimOptions,
'apiKey' | 'logger' | 'klingAccessKey' | 'klingSecretKey' | 'shapes' | 'account' | 'videoUrlTtlMs' | 'openControl'>> &
Pick<SimOptions, 'apiKey' | 'klingAccessKey' | 'klingSecretKey' | 'videoUrlTtlMs' | 'openControl'>

/** The path style and kind a request path names; null for any other path. */
export function routeOf (url: string): SimRoute | null {
  const m = /^(\/kling)?\/v1\/videos\/([^/?]+)/.exec(url)
  if (m === null || !(SIM_KINDS as readonly string[]).includes(m[2])) return null
  return { api: m[1] === undefined ? 'kling' : 'cometapi', kind: m[2] as SimKind }
}
/** What a task seeded by a test through create() is: the route the simulator first had. */
const DEFAULT_ROUTE = routeOf(PATH) as SimRoute

/** `model_name` values each endpoint takes (Kling's API reference, per endpoint). */
const MODELS: Record<SimKind, string[]> = {
  'multi-image2video': ['kling-v1-6'],
  image2video: ['kling-v1', 'kling-v1-5', 'kling-v1-6', 'kling-v2-master', 'kling-v2-1', 'kling-v2-1-master',
    'kling-v2-5-turbo', 'kling-v2-6'],
  text2video: ['kling-v1', 'kling-v1-6', 'kling-v2-master', 'kling-v2-1-master', 'kling-v2-5-turbo', 'kling-v2-6']
}

/** The claims of an HS256 JWT signed with `secret`; null when it is not one (malformed, other alg, bad signature). */
function verifyJwt (token: string, secret: string): Record<string, unknown> | null {
  const parts = token.split('.')
  if (parts.length !== 3) return null
  try {
    const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString()) as Record<string, unknown>
    if (header.alg !== 'HS256') return null
    const expected = createHmac('sha256', secret).update(`${parts[0]}.${parts[1]}`).digest()
    const given = Buffer.from(parts[2], 'base64url')
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString()) as unknown
    return typeof claims === 'object' && claims !== null ? claims as Record<string, unknown> : null
  } catch {
    return null
  }
}

export class Simulator {
  readonly app: FastifyInstance
  readonly tasks = new Map<string, SimTask>()
  readonly byExternal = new Map<string, string>()
  readonly byAlias = new Map<string, string>()
  shapes: SimShapes
  account: SimAccount
  faults: SimFault[] = []
  callbackPolicy: CallbackPolicy = { drop: false, duplicate: 1, delayMs: 0, reorder: false }
  counts = { creates: 0, accepted: 0, queries: 0, callbacks: 0, callbackFailures: 0 }
  /** Every create request as it arrived (faults included): when, for which external id, and what it made. */
  createLog: CreateRecord[] = []
  /** Create requests whose connection is still open, and the most there ever were at once. */
  inFlight = 0
  maxInFlight = 0
  /** The time claims of every Kling JWT with a valid signature, as it arrived (accepted or refused for its times). */
  tokensSeen: Array<{ at: number, exp: unknown, nbf: unknown }> = []
  opts: SimSettings
  baseUrl = ''
  private readonly timers = new Set<NodeJS.Timeout>()
  private readonly held = new Set<FastifyReply>()
  private readonly pendingReorder: Array<() => void> = []
  /** The route each create body arrived on, for create() and invalid(), which are handed only the body. */
  private readonly arrivedOn = new WeakMap<object, SimRoute>()
  private nextId = BigInt(860_000_000_000_000_000n) + BigInt(randomInt(1, 1_000_000_000))
  /** Signs expiring result URLs, so a URL with its expiry moved is refused like an expired one. */
  private readonly urlKey = randomUUID()
  /** What reset() goes back to: the shapes and account the run was started with. */
  private readonly initial: { shapes: SimShapes, account: SimAccount }

  constructor (opts: SimOptions = {}) {
    // An option given as undefined (an unset CLI flag) keeps its default.
    const given = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)) as SimOptions
    const defaults = { auto: true, processingAfterMs: 200, finishAfterMs: 600, outcome: 'succeed' } as const
    this.opts = { ...defaults, failRatio: 0, createDelayMs: 0, ...given }
    this.initial = { shapes: { ...DEFAULT_SHAPES, ...opts.shapes }, account: opts.account ?? 'ok' }
    this.shapes = { ...this.initial.shapes }
    this.account = this.initial.account
    this.app = Fastify({ logger: opts.logger ?? false, bodyLimit: 64 * 1024 * 1024, forceCloseConnections: true })
    this.routes()
  }

  /** Listens on a free loopback port and returns the base URL. */
  async listen (port = 0, host = '127.0.0.1'): Promise<string> {
    const address = await this.app.listen({ host, port })
    this.baseUrl = address
    return this.baseUrl
  }

  async close (): Promise<void> {
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
    for (const reply of this.held) reply.raw.destroy()
    this.held.clear()
    await this.app.close()
  }

  reset (): void {
    this.tasks.clear()
    this.byExternal.clear()
    this.byAlias.clear()
    this.shapes = { ...this.initial.shapes }
    this.account = this.initial.account
    this.faults = []
    this.callbackPolicy = { drop: false, duplicate: 1, delayMs: 0, reorder: false }
    this.counts = { creates: 0, accepted: 0, queries: 0, callbacks: 0, callbackFailures: 0 }
    this.createLog = []
    this.tokensSeen = []
    this.maxInFlight = this.inFlight
  }

  /** Queues a fault for the next `times` (default 1) matching requests. */
  inject (fault: SimFault): void { this.faults.push({ times: 1, ...fault }) }

  /** Tasks accepted for one external id: the "never two paid tasks" count. */
  acceptedFor (externalTaskId: string): number {
    return [...this.tasks.values()].filter(t => t.external_task_id === externalTaskId).length
  }

  /** Moves a task to `status` and sends its callback, as Kling would. */
  setStatus (taskId: string, status: SimStatus, msg = ''): SimTask {
    const task = this.tasks.get(taskId)
    if (task === undefined) throw new Error(`no task ${taskId}`)
    task.status = status
    task.status_msg = msg
    task.updated_at = Date.now()
    this.sendCallback(task)
    return task
  }

  /** The body CometAPI's query (and the flat callback) carries for a task. */
  taskView (task: SimTask, status: SimStatus = task.status): Record<string, unknown> {
    return {
      task_id: task.task_id,
      task_status: status,
      task_status_msg: status === 'failed' ? (task.status_msg || 'task failed') : task.status_msg,
      task_info: task.external_task_id === null ? {} : { external_task_id: task.external_task_id },
      task_result: status === 'succeed'
        ? {
            videos: [{
              id: `v-${task.task_id}`,
              url: `${this.baseUrl}/_sim/videos/${task.task_id}.mp4${this.expiryQuery(task)}`,
              duration: String(task.body.duration ?? '5')
            }]
          }
        : {},
      created_at: this.time(task.created_at),
      updated_at: this.time(task.updated_at)
    }
  }

  /** URLs that expire: `?x-expires=…&x-signature=…` with `videoUrlTtlMs` set, else nothing. */
  private expiryQuery (task: SimTask): string {
    if (this.opts.videoUrlTtlMs === undefined) return ''
    const expires = String(Math.floor((task.updated_at + this.opts.videoUrlTtlMs) / 1000))
    return `?x-expires=${expires}&x-signature=${this.urlSignature(task.task_id, expires)}`
  }

  private urlSignature (taskId: string, expires: string): string {
    return createHmac('sha256', this.urlKey).update(`${taskId}:${expires}`).digest('hex').slice(0, 32)
  }

  /** A time as the run's `timestamps` shape writes it. */
  time (ms: number): number {
    return this.shapes.timestamps === 's' ? Math.floor(ms / 1000) : ms
  }

  /** JSON as the run writes it: with `numericIds`, digit-only `task_id`/`id` values as bare numbers, digits kept. */
  json (value: unknown): string {
    const text = JSON.stringify(value)
    return this.shapes.numericIds ? text.replace(/"(task_id|id)":"(\d+)"/g, '"$1":$2') : text
  }

  private send (reply: FastifyReply, status: number, value: unknown): FastifyReply {
    return reply.code(status).type('application/json').send(this.json(value))
  }

  /** The task a query names: by Kling's id, the alias, or (unless the look-up is off) the external id. */
  private find (id: string): SimTask | undefined {
    const byAlias = this.byAlias.get(id)
    return this.tasks.get(id) ?? (byAlias === undefined ? undefined : this.tasks.get(byAlias)) ??
      (this.shapes.externalLookup ? this.tasks.get(this.byExternal.get(id) ?? '') : undefined)
  }

  /** Whether `id` is one only an external-id look-up could find (one of ours, or shaped like a UUID). */
  private looksExternal (id: string): boolean {
    return this.byExternal.has(id) || /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id)
  }

  /**
   * A task's video: the sample MP4 and, after it, a top-level `free` box naming the task (ISO BMFF: players skip
   * it). Still different bytes per task, so a mirror that mixed two tasks up fails a byte-for-byte check.
   */
  static videoBytes (taskId: string): Buffer {
    const note = Buffer.from(`kling-gateway simulator video for task ${taskId}`)
    const header = Buffer.alloc(8)
    header.writeUInt32BE(8 + note.length, 0)
    header.write('free', 4, 'latin1')
    return Buffer.concat([SAMPLE_MP4, header, note])
  }

  private takeFault (on: SimFault['on']): SimFault | undefined {
    const i = this.faults.findIndex(f => f.on === on)
    if (i < 0) return undefined
    const fault = this.faults[i]
    fault.times = (fault.times ?? 1) - 1
    if (fault.times <= 0) this.faults.splice(i, 1)
    return fault
  }

  private later (ms: number, fn: () => void): void {
    const t = setTimeout(() => { this.timers.delete(t); fn() }, ms)
    this.timers.add(t)
  }

  private hold (reply: FastifyReply): FastifyReply {
    this.held.add(reply)
    this.later(MAX_HANG_MS, () => { this.held.delete(reply); reply.raw.destroy() })
    return reply
  }

  /** Answers a fault that needs no task; returns true when the request has been dealt with. */
  private applyCommonFault (fault: SimFault | undefined, reply: FastifyReply): boolean {
    if (fault === undefined) return false
    switch (fault.kind) {
      case 'http-error':
        reply.code(fault.status ?? 500).send({
          error: {
            message: `${fault.message ?? 'upstream error'} (request id: ${randomUUID()})`,
            type: 'comet_api_error',
            param: '',
            code: fault.code ?? ''
          }
        })
        return true
      case 'rate-limit':
        reply.code(429).header('retry-after', String(fault.retryAfter ?? 1)).send({
          error: { message: 'rate limit exceeded', type: 'comet_api_error', param: '', code: 'rate_limit' }
        })
        return true
      case 'kling-error':
        reply.code(fault.status ?? 400).send({
          code: fault.code ?? 1201,
          message: fault.message ?? 'invalid params',
          request_id: randomUUID()
        })
        return true
      case 'reset':
        reply.raw.socket?.destroy()
        return true
      case 'hang':
        this.hold(reply)
        return true
      case 'new-api-error':
        reply.code(fault.status ?? 400).send({
          code: fault.code ?? 'invalid_request', message: fault.message ?? 'invalid request', data: null
        })
        return true
      case 'html':
        reply.code(fault.status ?? 200).type('text/html; charset=utf-8')
          .send('<!doctype html><html><head><title>Welcome</title></head><body><h1>Welcome</h1></body></html>')
        return true
      default:
        return false
    }
  }

  /**
   * The account's refusal of a request, in the run's error shape, or false: a revoked key refuses everything, an
   * empty wallet every create (queries are free).
   */
  private refusedByAccount (request: FastifyRequest, reply: FastifyReply, op: 'create' | 'query'): boolean {
    if (this.account === 'ok' || (this.account === 'balance' && op === 'query')) return false
    const kling = routeOf(request.url)?.api === 'kling'
    if (this.account === 'key') {
      const message = `invalid token (request id: ${randomUUID()})`
      reply.code(401).send(kling
        ? { code: 1002, message: 'Authorization is invalid', request_id: randomUUID() }
        : { error: { message, type: 'comet_api_error', param: '', code: '' } })
      return true
    }
    if (kling) {
      reply.code(429).send({ code: 1102, message: 'resource pack exhausted', request_id: randomUUID() })
    } else if (this.shapes.errors === 'new-api') {
      reply.code(402).send({ code: 'insufficient_user_quota', message: 'user quota is not enough', data: null })
    } else {
      reply.code(403).send({
        error: {
          message: `user quota is not enough (request id: ${randomUUID()})`,
          type: 'comet_api_error',
          param: '',
          code: 'insufficient_user_quota'
        }
      })
    }
    return true
  }

  private authorized (request: FastifyRequest, reply: FastifyReply): boolean {
    if (routeOf(request.url)?.api === 'kling') return this.klingAuthorized(request, reply)
    const auth = request.headers.authorization ?? ''
    const ok = auth.startsWith('Bearer ') && auth.length > 7 &&
      (this.opts.apiKey === undefined || auth === `Bearer ${this.opts.apiKey}`)
    if (!ok) reply.code(401).send({ error: { message: 'invalid token', type: 'comet_api_error', param: '', code: '' } })
    return ok
  }

  /**
   * Kling's own auth (Kling's API reference, "Authentication" and error codes 1001-1004): a JWT when the simulator
   * has Kling keys, any Bearer value otherwise.
   */
  private klingAuthorized (request: FastifyRequest, reply: FastifyReply): boolean {
    const refuse = (code: number, message: string): false => {
      reply.code(401).send({ code, message, request_id: randomUUID() })
      return false
    }
    const auth = request.headers.authorization ?? ''
    if (!auth.startsWith('Bearer ') || auth.length <= 7) return refuse(1001, 'Authorization is empty')
    const { klingAccessKey, klingSecretKey } = this.opts
    if (klingAccessKey === undefined || klingSecretKey === undefined) return true
    const claims = verifyJwt(auth.slice(7), klingSecretKey)
    if (claims === null || claims.iss !== klingAccessKey) return refuse(1002, 'Authorization is invalid')
    this.tokensSeen.push({ at: Date.now(), exp: claims.exp, nbf: claims.nbf })
    const now = Date.now() / 1000
    if (typeof claims.nbf === 'number' && claims.nbf > now) return refuse(1003, 'Authorization is not yet valid')
    if (typeof claims.exp !== 'number' || claims.exp <= now) return refuse(1004, 'Authorization has expired')
    return true
  }

  /** The create body of a request, remembered with the route it came in on. */
  private arrived (request: FastifyRequest): Record<string, unknown> {
    const sent = request.body
    const body = typeof sent === 'object' && sent !== null ? sent as Record<string, unknown> : {}
    const route = routeOf(request.url)
    if (route !== null) this.arrivedOn.set(body, route)
    return body
  }

  /** Makes a task as an accepted create would (tests seed tasks with it; with no route, a CometAPI multi-image one). */
  create (body: Record<string, unknown>, route = this.arrivedOn.get(body) ?? DEFAULT_ROUTE): SimTask {
    const now = Date.now()
    this.nextId += BigInt(randomInt(1, 1000))
    const external = typeof body.external_task_id === 'string' ? body.external_task_id : null
    const task: SimTask = {
      task_id: this.nextId.toString(),
      alias: `task_${randomUUID().replace(/-/g, '')}`,
      kind: route.kind,
      api: route.api,
      external_task_id: external,
      callback_url: typeof body.callback_url === 'string' ? body.callback_url : null,
      status: 'submitted',
      status_msg: '',
      body: { ...body, image_list: undefined },
      created_at: now,
      updated_at: now,
      callbacks_sent: 0
    }
    this.tasks.set(task.task_id, task)
    if (external !== null) this.byExternal.set(external, task.task_id)
    this.byAlias.set(task.alias, task.task_id)
    this.counts.accepted++
    if (this.opts.auto) {
      this.later(this.opts.processingAfterMs, () => {
        if (task.status === 'submitted') this.setStatus(task.task_id, 'processing')
      })
      // Drawn now, not when the timer fires, so the outcome does not depend on timing.
      const outcome = Math.random() < this.opts.failRatio ? 'failed' : this.opts.outcome
      this.later(this.opts.finishAfterMs, () => {
        if (task.status === 'succeed' || task.status === 'failed') return
        this.setStatus(task.task_id, outcome, outcome === 'failed' ? 'content risk control' : '')
      })
    }
    return task
  }

  /** Kling's own parameter checks, loosely: enough that a gateway bug (or a body for another kind) shows up as 1201. */
  private invalid (body: Record<string, unknown>, kind = this.arrivedOn.get(body)?.kind ?? DEFAULT_ROUTE.kind):
  string | undefined {
    const given = (v: unknown) => typeof v === 'string' && v.length > 0
    if (kind === 'multi-image2video') {
      const list = body.image_list
      if (!Array.isArray(list) || list.length < 1 || list.length > 4) return 'image_list must have 1-4 items'
      if (!given(body.prompt)) return 'prompt is required'
      // Masks refused: Kling's multi-image2video has none (CometAPI's page says not to send them on this route).
      if (body.static_mask !== undefined || body.dynamic_masks !== undefined) {
        return 'static_mask and dynamic_masks are not supported by multi-image2video'
      }
    } else if (kind === 'image2video') {
      if (!given(body.image) && !given(body.image_tail)) return 'image or image_tail is required'
      if (body.image_list !== undefined) return 'image_list is not a parameter of image2video'
      const groups = [body.image_tail, body.static_mask ?? body.dynamic_masks, body.camera_control]
      if (groups.filter(g => g !== undefined).length > 1) {
        return 'image_tail, static_mask/dynamic_masks and camera_control cannot be used together'
      }
    } else {
      if (!given(body.prompt)) return 'prompt is required'
      if (body.image !== undefined || body.image_list !== undefined) return 'images are not parameters of text2video'
    }
    if (typeof body.prompt === 'string' && body.prompt.length > 2500) return 'prompt must be at most 2500 characters'
    if (body.duration !== undefined && body.duration !== '5' && body.duration !== '10') {
      return 'duration must be "5" or "10"'
    }
    if (body.model_name !== undefined && !MODELS[kind].includes(String(body.model_name))) {
      return `model ${String(body.model_name)} not supported`
    }
    if (typeof body.external_task_id === 'string' && this.byExternal.has(body.external_task_id)) {
      return 'external_task_id already exists'
    }
    return undefined
  }

  /** What an accepted create answers, in the run's create shape. */
  private createAnswer (task: SimTask): Record<string, unknown> {
    const id = this.shapes.aliasIds ? task.alias : task.task_id
    if (this.shapes.create === 'openai') {
      return {
        id,
        task_id: id,
        object: 'video',
        model: task.body.model_name ?? null,
        status: 'queued',
        progress: 0,
        created_at: this.time(task.created_at)
      }
    }
    return {
      code: 0,
      message: 'SUCCEED',
      data: {
        task_id: id,
        task_status: task.status,
        task_info: task.external_task_id === null ? {} : { external_task_id: task.external_task_id },
        created_at: this.time(task.created_at),
        updated_at: this.time(task.updated_at)
      }
    }
  }

  /** A look-up by external id where there is none: the route answers 404, not "no such task". */
  private unsupportedLookup (request: FastifyRequest, reply: FastifyReply): FastifyReply {
    if (routeOf(request.url)?.api === 'kling') {
      return reply.code(404).send({ code: 1202, message: 'the requested method is invalid', request_id: randomUUID() })
    }
    return reply.code(404).send({
      error: { message: `Invalid URL (GET ${request.url})`, type: 'invalid_request_error', param: '', code: '' }
    })
  }

  private sendCallback (task: SimTask): void {
    if (task.callback_url === null) return
    const policy = this.callbackPolicy
    if (policy.drop || (policy.dropRatio !== undefined && Math.random() < policy.dropRatio)) return
    const body = this.json(this.taskView(task))
    const url = task.callback_url
    const send = () => {
      for (let i = 0; i < policy.duplicate; i++) {
        this.counts.callbacks++
        task.callbacks_sent++
        undiciRequest(url, {
          method: 'POST',
          body,
          headers: { 'content-type': 'application/json' },
          headersTimeout: 5000,
          bodyTimeout: 5000
        })
          .then(async res => { await res.body.dump(); if (res.statusCode >= 300) this.counts.callbackFailures++ })
          .catch(() => { this.counts.callbackFailures++ })
      }
    }
    if (policy.reorder) {
      // Hold this callback and release every held one in reverse order when the task ends.
      this.pendingReorder.push(send)
      if (task.status === 'succeed' || task.status === 'failed') {
        const all = this.pendingReorder.splice(0).reverse()
        this.later(policy.delayMs, () => { for (const s of all) s() })
      }
      return
    }
    if (policy.delayMs > 0) this.later(policy.delayMs, send)
    else send()
  }

  private routes (): void {
    const app = this.app

    const createTask = async (request: FastifyRequest, reply: FastifyReply) => {
      this.counts.creates++
      const sent = (request.body ?? {}) as Record<string, unknown>
      const record: CreateRecord = {
        at: Date.now(),
        externalTaskId: typeof sent.external_task_id === 'string' ? sent.external_task_id : null,
        prompt: typeof sent.prompt === 'string' ? sent.prompt : null,
        taskId: null,
        imageSha256: base64Images(sent)
          .map(b64 => createHash('sha256').update(Buffer.from(b64, 'base64')).digest('hex'))
      }
      this.createLog.push(record)
      this.inFlight++
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight)
      reply.raw.once('close', () => { this.inFlight-- })
      if (!this.authorized(request, reply)) return reply
      const delay = this.opts.createDelayMs
      if (delay > 0) await new Promise<void>(resolve => { this.later(delay, resolve) })
      if (this.refusedByAccount(request, reply, 'create')) return reply
      const fault = this.takeFault('create')
      if (this.applyCommonFault(fault, reply)) return reply
      const body = this.arrived(request)
      const problem = this.invalid(body)
      if (problem !== undefined) return reply.code(400).send({ code: 1201, message: problem, request_id: randomUUID() })
      const task = this.create(body)
      record.taskId = task.task_id
      if (fault?.kind === 'accept-then-hang') return this.hold(reply)
      if (fault?.kind === 'accept-then-reset') { reply.raw.socket?.destroy(); return reply }
      if (fault?.kind === 'accept-then-html') {
        return reply.code(200).type('text/html; charset=utf-8').send('<!doctype html><html><body>OK</body></html>')
      }
      return this.send(reply, 200, this.createAnswer(task))
    }

    type QueryRequest = FastifyRequest<{ Params: { kind: string, id: string } }>
    const queryTask = async (request: QueryRequest, reply: FastifyReply) => {
      this.counts.queries++
      if (!this.authorized(request, reply)) return reply
      if (this.refusedByAccount(request, reply, 'query')) return reply
      const fault = this.takeFault('query')
      if (this.applyCommonFault(fault, reply)) return reply
      const id = request.params.id
      if (!this.shapes.externalLookup && this.looksExternal(id) && fault?.kind !== 'not-found') {
        return this.unsupportedLookup(request, reply)
      }
      const task = this.find(id)
      // Kling keeps each endpoint's tasks apart: a task asked for on another kind's path is not found there.
      if (task === undefined || task.kind !== request.params.kind || fault?.kind === 'not-found') {
        if (this.shapes.errors === 'new-api' && routeOf(request.url)?.api === 'cometapi') {
          return this.send(reply, 400, { code: 'task_not_exist', message: 'task_not_exist', data: null })
        }
        return reply.code(400).send({
          code: 1201,
          message: `Task not found by id/external id: ${id}`,
          request_id: randomUUID()
        })
      }
      const status = fault?.kind === 'status' ? (fault.taskStatus ?? task.status) : task.status
      const answer = { code: 0, message: 'SUCCEED', request_id: randomUUID(), data: this.taskView(task, status) }
      return this.send(reply, 200, answer)
    }

    // CometAPI's paths are Kling's own under /kling: every kind answers on both, so either adapter can be tested.
    const knownKind = async (request: FastifyRequest, reply: FastifyReply) => {
      if (routeOf(request.url) === null) {
        const body = { code: 1202, message: 'the requested method is invalid', request_id: randomUUID() }
        return await reply.code(404).send(body)
      }
    }
    for (const prefix of ['/kling/v1/videos', '/v1/videos']) {
      app.post(`${prefix}/:kind`, { onRequest: knownKind }, createTask)
      app.get<{ Params: { kind: string, id: string } }>(`${prefix}/:kind/:id`, { onRequest: knownKind }, queryTask)
    }

    type VideoRequest = { Params: { id: string }, Querystring: Record<string, string | undefined> }
    app.get<VideoRequest>('/_sim/videos/:id', async (request, reply) => {
      const taskId = request.params.id.replace(/\.mp4$/, '')
      if (!this.tasks.has(taskId)) return reply.code(404).send('not found')
      // URLs that expire: past `x-expires` (or with a signature that does not match it), 403, as a CDN answers.
      const { 'x-expires': expires, 'x-signature': signature } = request.query
      if (expires !== undefined || signature !== undefined) {
        const valid = expires !== undefined && signature === this.urlSignature(taskId, expires)
        if (!valid || Date.now() >= Number(expires) * 1000) {
          return reply.code(403).type('application/xml').send('<?xml version="1.0" encoding="UTF-8"?>\n' +
            '<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>')
        }
      }
      return sendVideo(request, reply, Simulator.videoBytes(taskId))
    })

    // Control API, for tests in other processes and for poking the demo by hand (README, "Simulator").
    app.addHook('onRequest', async (request, reply) => {
      if (!request.url.startsWith('/_sim/') || request.url.startsWith('/_sim/videos/')) return
      if (this.opts.openControl === true || isLoopback(request.socket.remoteAddress)) return
      return await reply.code(403).send({ error: 'the control API answers loopback peers only (--open-control)' })
    })
    app.get('/_sim/state', async () => ({
      pace: {
        auto: this.opts.auto,
        processingAfterMs: this.opts.processingAfterMs,
        finishAfterMs: this.opts.finishAfterMs,
        outcome: this.opts.outcome,
        failRatio: this.opts.failRatio
      },
      counts: this.counts,
      faults: this.faults,
      shapes: this.shapes,
      account: this.account,
      tasks: [...this.tasks.values()]
    }))
    // Compact views for fault suites in other processes: every paid task and every create attempt, without
    // callback URLs (they carry tokens) or bodies.
    app.get('/_sim/tasks', async () => ({
      tasks: [...this.tasks.values()].map(t => ({
        task_id: t.task_id,
        external_task_id: t.external_task_id,
        prompt: typeof t.body.prompt === 'string' ? t.body.prompt : null,
        status: t.status,
        created_at: t.created_at,
        callbacks_sent: t.callbacks_sent
      }))
    }))
    app.get('/_sim/creates', async () => ({ counts: this.counts, creates: this.createLog }))
    app.post('/_sim/faults', async (request) => {
      this.inject(request.body as SimFault)
      return { faults: this.faults }
    })
    app.delete('/_sim/faults', async () => { this.faults = []; return { faults: [] } })
    app.post('/_sim/callbacks', async (request) => {
      Object.assign(this.callbackPolicy, request.body)
      return this.callbackPolicy
    })
    app.post('/_sim/options', async (request) => { Object.assign(this.opts, request.body); return this.opts })
    app.post('/_sim/reset', async () => { this.reset(); return { ok: true } })
    // The wire shapes of this run, changed in place (a partial object; the rest stays).
    app.post('/_sim/shapes', async (request) => {
      Object.assign(this.shapes, request.body)
      return this.shapes
    })
    // The account: `ok`, `balance` (every create refused for an empty wallet) or `key` (every request refused).
    app.post<{ Body: { state: SimAccount } }>('/_sim/account', async (request, reply) => {
      const state = request.body?.state
      if (state !== 'ok' && state !== 'balance' && state !== 'key') {
        return await reply.code(400).send({ error: 'state must be ok, balance or key' })
      }
      this.account = state
      return { account: this.account }
    })
    type StatusRequest = { Params: { id: string }, Body: { status: SimStatus, message?: string } }
    app.post<StatusRequest>('/_sim/tasks/:id/status', async (request, reply) => {
      if (!this.tasks.has(request.params.id)) return reply.code(404).send({ error: 'no such task' })
      return this.setStatus(request.params.id, request.body.status, request.body.message)
    })
  }
}

/** Whether a peer address is this host's: 127.0.0.0/8 or ::1, also as IPv4-mapped IPv6. */
function isLoopback (address: string | undefined): boolean {
  if (address === undefined) return false
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address
  return v4.startsWith('127.') || address === '::1'
}

/**
 * A video whole or by one `bytes=` range (players seek with them; Safari plays nothing without 206): 206 with
 * Content-Range, 416 for a range past the end; anything else it cannot read (several ranges) gets the whole file.
 */
function sendVideo (request: FastifyRequest, reply: FastifyReply, bytes: Buffer): FastifyReply {
  const size = bytes.length
  reply.header('accept-ranges', 'bytes')
  const m = /^bytes=(\d*)-(\d*)$/.exec(request.headers.range ?? '')
  if (m === null || (m[1] === '' && m[2] === '')) {
    return reply.type('video/mp4').header('content-length', size).send(bytes)
  }
  // `bytes=-n` is the last n bytes; `bytes=a-` from a to the end; an end past the file is cut to it.
  const start = m[1] === '' ? Math.max(size - Number(m[2]), 0) : Number(m[1])
  const end = m[1] === '' || m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1)
  if (start >= size || start > end || (m[1] === '' && Number(m[2]) === 0)) {
    return reply.code(416).header('content-range', `bytes */${size}`).send()
  }
  return reply.code(206).type('video/mp4').header('content-range', `bytes ${start}-${end}/${size}`)
    .header('content-length', end - start + 1).send(bytes.subarray(start, end + 1))
}
