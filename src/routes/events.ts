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

/** An open stream, as the shared heartbeat sees it. */
interface OpenStream { raw: ServerResponse, beat: () => void }

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
  const streams = new Set<OpenStream>()
  const heartbeat = setInterval(() => { for (const s of streams) s.beat() }, opts.heartbeatMs)
  heartbeat.unref()
  app.addHook('preClose', async () => {
    clearInterval(heartbeat)
    for (const s of streams) s.raw.end(': server closing\n\n')
    streams.clear()
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
    let last = await resumeAfter(task.id, request.headers['last-event-id'] || request.query.last_event_id || '')
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
    let done = false
    let chain = Promise.resolve()
    // A catch-up that failed (Redis away) is tried again at the next heartbeat, as is one after the live reader
    // resumed (hub.resumes moved on); otherwise the live events are all a stream needs.
    let stale = false
    let resumes = hub.resumes
    /**
     * Writes, and cuts a stream whose client does not read: past MAX_QUEUED_BYTES waiting in our buffer, memory would
     * grow without bound. Destroyed, not ended (an end would wait behind the same unread bytes); the client resumes
     * with Last-Event-ID, and a frame cut in half is discarded by its parser.
     */
    const send = (text: string): boolean => {
      raw.write(text)
      if (raw.writableLength <= MAX_QUEUED_BYTES) return true
      request.log.info({ taskId: task.id, queued: raw.writableLength }, 'sse client not reading: stream cut')
      raw.destroy()
      finish()
      return false
    }
    const write = (e: TaskEvent) => {
      if (done || e.sequence <= last) return
      if (!send(frameOf(e))) return
      last = e.sequence
      // A "last" event the log has gone past (a deadline failure that upstream's success followed) is not the end.
      if (isLastEvent(e) && e.sequence >= task.sequence) finish()
    }
    // Reads what was missed from the task's event list; every write goes through one chain, in order.
    const catchUp = () => {
      stale = false
      resumes = hub.resumes
      chain = chain
        .then(async () => { if (!done) for (const e of await store.events(task.id, last)) write(e) })
        .catch(err => {
          stale = true
          request.log.warn({ err }, 'sse catch-up failed; trying again at the next heartbeat')
        })
    }
    const unlisten = hub.listen(task.id, e => {
      chain = chain.then(() => { if (e.sequence === last + 1) write(e); else if (e.sequence > last + 1) catchUp() })
    })
    const stream: OpenStream = {
      raw,
      beat: () => {
        if (done || !send(': ping\n\n')) return
        if (stale || resumes !== hub.resumes) catchUp()
      }
    }
    function finish () {
      if (done) return
      done = true
      unlisten()
      streams.delete(stream)
      slot.release()
      raw.end()
    }
    send('retry: 2000\n\n')
    streams.add(stream)
    raw.on('close', finish)
    // A client gone during the reads above had its `close` already: end at once, or its place would never be free.
    if (raw.socket === null || raw.socket.destroyed) finish()

    // Listen first, then replay: an event appended in between arrives live and is deduplicated by sequence.
    catchUp()
  })
}
export default events
