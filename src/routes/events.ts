import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { ServerResponse } from 'node:http'
import { Type } from 'typebox'
import { CallerLimitExceeded, NotFound } from '../domain/errors.ts'
import { isLastEvent, isSettled, type TaskEvent } from '../domain/task.ts'
import { internal, invalidField, LinkSigSchema, problem, unauthorized, unavailable } from '../schemas/common.ts'
import { eventExample } from '../schemas/examples.ts'
import { TaskParamsSchema } from '../schemas/videos.ts'
import { canSee, type Caller } from '../plugins/auth.ts'
import { limitsFor } from '../config/callers.ts'
import { CallerSlots, type Slot } from '../services/caller-slots.ts'
import { callerLimitProblem } from '../schemas/limits.ts'
import type { FastifyBaseLogger } from 'fastify'
import type { TaskStore } from '../store/tasks.ts'
import type { EventHub } from '../notify/hub.ts'

/**
 * `GET /v1/videos/:id/events`: Server-Sent Events (docs/API.md, "SSE"). Replays from `Last-Event-ID` (header, or
 * `?last_event_id=` for clients that cannot set headers), then goes live. `id:` is the event's own id, which is
 * never reused; a reconnect resumes after that event with no gap and no duplicate. An id the task no longer has
 * (rolled back with Redis) replays the whole log; a bare number is a sequence. The stream ends after the last
 * event the task will ever have (after `video.stored` when a success is being copied), and a reconnect after
 * that gets 204, which tells an EventSource to stop. Heartbeat comments keep proxies from closing an idle stream.
 */
const EventIdSchema = Type.String({
  maxLength: 64,
  pattern: '^[A-Za-z0-9_.-]*$',
  description: 'an event id (`evt_…`) or a sequence number'
})

/**
 * Bytes a stream may have waiting unsent on our side (past what the kernel took). Generous for any burst of one
 * task's events (each a few KB), small enough that 2,000 stalled clients cannot hold more than 512 MB.
 */
export const MAX_QUEUED_BYTES = 256 * 1024

/**
 * The frame of an event, made once per event and replica however many streams it goes to: the hub hands every
 * listener the same object. Weak, so a frame lives as long as its event does.
 */
const frames = new WeakMap<TaskEvent, string>()
function frameOf (e: TaskEvent): string {
  let frame = frames.get(e)
  if (frame === undefined) frames.set(e, frame = `id: ${e.id}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`)
  return frame
}

/** What every stream of a replica shares. */
interface Shared { store: TaskStore, hub: EventHub, streams: Set<LiveStream> }

/**
 * One open stream: its socket, where it is in its task's log, and its place. A class with only these fields, not
 * closures over the request and the task record, so 2,000 open streams hold what they need and no more.
 */
class LiveStream {
  private done = false
  /** Every write goes through this chain, in order. */
  private chain = Promise.resolve()
  /** A catch-up failed (Redis away): the next heartbeat tries again. */
  private stale = false
  /** Catch-ups failed in a row. */
  private failures = 0
  /** The hub's resume count when this stream last read the log; behind it, the next heartbeat reads again. */
  private resumes: number
  private readonly unlisten: () => void

  /** `last`: the sequence sent (or resumed after); `final`: the task's sequence when the stream opened. */
  constructor (readonly raw: ServerResponse, private readonly taskId: string, private last: number,
    private readonly final: number, private readonly slot: Slot, private readonly log: FastifyBaseLogger,
    private readonly shared: Shared) {
    this.resumes = shared.hub.resumes
    // Listen first, then replay: an event appended in between arrives live and is deduplicated by sequence.
    this.unlisten = shared.hub.listen(taskId, e => {
      this.chain = this.chain.then(() => {
        if (e.sequence === this.last + 1) this.write(e)
        else if (e.sequence > this.last + 1) this.catchUp()
      })
    })
  }

  /** Goes: in the replica's set, tied to its socket's `close`, then the replay. */
  start (): void {
    this.shared.streams.add(this)
    this.raw.on('close', () => { this.finish() })
    this.send('retry: 2000\n\n')
    // A client gone during the route's reads had its `close` already: end at once, or its place would never be free.
    if (this.raw.socket === null || this.raw.socket.destroyed) this.finish()
    else this.catchUp()
  }

  /** The shared heartbeat: a comment keeps proxies from closing an idle stream. */
  beat (): void {
    if (this.done || !this.send(': ping\n\n')) return
    if (this.stale || this.resumes !== this.shared.hub.resumes) this.catchUp()
  }

  /** Ends the stream (the task had its last event, the client left, or the replica is closing). */
  finish (closing?: string): void {
    if (this.done) return
    this.done = true
    this.unlisten()
    this.shared.streams.delete(this)
    this.slot.release()
    if (closing === undefined) this.raw.end()
    else this.raw.end(closing)
  }

  /**
   * Writes, and cuts a stream whose client does not read: past MAX_QUEUED_BYTES waiting in our buffer, memory would
   * grow without bound. Destroyed, not ended (an end would wait behind the same unread bytes); the client resumes
   * with Last-Event-ID, and a frame cut in half is discarded by its parser.
   */
  private send (text: string): boolean {
    this.raw.write(text)
    if (this.raw.writableLength <= MAX_QUEUED_BYTES) return true
    this.log.info({ taskId: this.taskId, queued: this.raw.writableLength }, 'sse client not reading: stream cut')
    this.raw.destroy()
    this.finish()
    return false
  }

  private write (e: TaskEvent): void {
    if (this.done || e.sequence <= this.last) return
    if (!this.send(frameOf(e))) return
    this.last = e.sequence
    // A "last" event the log has gone past (a deadline failure that upstream's success followed) is not the end.
    if (isLastEvent(e) && e.sequence >= this.final) this.finish()
  }

  /** Reads what was missed from the task's event list. */
  private catchUp (): void {
    this.stale = false
    this.resumes = this.shared.hub.resumes
    this.chain = this.chain
      .then(async () => {
        if (this.done) return
        for (const e of await this.shared.store.events(this.taskId, this.last)) this.write(e)
        this.failures = 0
      })
      .catch(err => {
        this.stale = true
        // Once per outage and stream: 2,000 streams retrying every heartbeat must not be 2,000 warnings each time.
        if (this.failures++ === 0) this.log.warn({ err }, 'sse catch-up failed; trying again at each heartbeat')
      })
  }
}

const events: FastifyPluginAsyncTypebox<{ heartbeatMs: number }> = async (app, opts) => {
  const { store, hub, config } = app.deps
  // Open streams per caller on this replica (max_sse_streams): each holds a socket and a hub listener.
  const open = new CallerSlots()

  /** The sequence to resume after: the named event's, a bare number's, or 0 for an id the log does not hold. */
  const resumeAfter = async (taskId: string, lastEventId: string): Promise<number> => {
    if (lastEventId === '') return 0
    if (/^\d{1,9}$/.test(lastEventId)) return Number(lastEventId)
    return (await store.events(taskId)).find(e => e.id === lastEventId)?.sequence ?? 0
  }
  // Open SSE streams of this replica: one heartbeat timer beats them all (2,000 streams are one timer, not 2,000),
  // and preClose ends them so shutdown never waits on them.
  const streams = new Set<LiveStream>()
  const shared: Shared = { store, hub, streams }
  const heartbeat = setInterval(() => { for (const s of streams) s.beat() }, opts.heartbeatMs)
  heartbeat.unref()
  app.addHook('preClose', async () => {
    clearInterval(heartbeat)
    for (const s of [...streams]) s.finish(': server closing\n\n')
  })

  app.get('/:id/events', {
    onRequest: app.authenticateOrLink('events'),
    schema: {
      tags: ['videos'],
      operationId: 'streamVideoEvents',
      summary: 'Server-Sent Events of one task, resumable with Last-Event-ID',
      description: 'Replays the task\'s events after `Last-Event-ID` (header, or `?last_event_id=`), then streams ' +
        'new ones live, and ends after the task\'s last event (`video.stored` after a success, else the terminal ' +
        'one); a reconnect after that gets 204, which tells an EventSource to stop. `id:` is the event id, ' +
        '`event:` its type, `data:` the TaskEvent JSON. Reconnecting with the last id seen resumes with no gap and ' +
        'no duplicate; `: ping` comments keep proxies from closing an idle stream. The caller that owns the task, ' +
        'or an admin key; instead of the Authorization header, a signed link\'s `?sig=` (`POST ' +
        '/v1/videos/{id}/links`), so an `EventSource` can open it.',
      security: [{ bearer: [] }],
      params: TaskParamsSchema,
      headers: Type.Object({ 'last-event-id': Type.Optional(EventIdSchema) }),
      querystring: Type.Object({
        last_event_id: Type.Optional(EventIdSchema),
        sig: Type.Optional(LinkSigSchema)
      }, { additionalProperties: false }),
      response: {
        200: {
          description: 'text/event-stream: `id:` the event id, `event:` its type, `data:` the TaskEvent JSON; ends ' +
            'after the last event the task will have (`video.stored` after a success)',
          content: {
            'text/event-stream': {
              schema: Type.String({ description: 'SSE frames; each `data:` is a TaskEvent' }),
              example: `retry: 2000\n\nid: ${eventExample('video.queued').id}\nevent: video.queued\n` +
                `data: ${JSON.stringify(eventExample('video.queued'))}\n\n: ping\n\n`
            }
          }
        },
        204: {
          description: 'the task has had its last event and the client has seen it: stop reconnecting',
          type: 'null'
        },
        400: invalidField('invalid id or Last-Event-ID', '/last-event-id', 'must match pattern "^[A-Za-z0-9_.-]*$"',
          'headers'),
        401: unauthorized(),
        404: problem(404, 'no such task for this caller'),
        429: callerLimitProblem('this caller already has `max_sse_streams` streams open on this replica ' +
          '(CALLER_MAX_SSE_STREAMS, CALLER_LIMITS); nothing was streamed. Close one, or retry after Retry-After',
        'max_sse_streams', 100),
        500: internal(),
        503: unavailable()
      }
    }
  }, async (request, reply) => {
    const caller = request.caller as Caller
    const task = await store.get(request.params.id)
    if (!canSee(caller, task)) throw new NotFound('task')
    const last = await resumeAfter(task.id, request.headers['last-event-id'] || request.query.last_event_id || '')
    // Nothing more will ever come: 204 tells an EventSource to stop reconnecting.
    if (isSettled(task) && last >= task.sequence) return await reply.code(204).send(null)
    // Taken with no await before its release is tied to `close` below: the check cannot race, a place cannot leak.
    const max = limitsFor(config.callers, caller.name).maxSseStreams
    const taken = open.take(caller.name, max)
    if (taken === 'caller' || taken === 'global') {
      throw new CallerLimitExceeded('max_sse_streams', max, 5, `caller limit max_sse_streams (${max}) reached: ` +
        `${max} SSE streams of this caller are open on this replica`)
    }
    const slot: Slot = taken

    reply.hijack()
    const raw = reply.raw
    raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no'
    })
    new LiveStream(raw, task.id, last, task.sequence, slot, request.log, shared).start()
  })
}
export default events
