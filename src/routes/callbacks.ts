import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { callbackKeys, checkCallbackToken } from '../domain/callback-token.ts'
import { GatewayError, InvalidRequest, NotFound } from '../domain/errors.ts'
import { changeFromUpstream } from '../domain/upstream-state.ts'
import { bodyProblems, internal, json, problem, unavailable } from '../schemas/common.ts'
import { parseTask } from '../upstream/client.ts'
import { parseJsonKeepingIds } from '../upstream/schemas.ts'
import { parseJsonBody } from '../plugins/bounds.ts'
import { CallbackRate, MAX_CALLBACKS_PER_MINUTE } from '../services/callback-rate.ts'

export const CALLBACK_BODY_LIMIT = 64 * 1024

const CallbackAnswerSchema = Type.Object({
  outcome: Type.Union([
    Type.Literal('applied'), Type.Literal('duplicate'), Type.Literal('confirming'), Type.Literal('orphaned')
  ]),
  status: Type.String({ description: 'the task\'s status; for `orphaned`, the status upstream reported' })
})

/**
 * CometAPI → gateway (docs/API.md, "The upstream callback"). The token in the query names the task and proves we
 * issued it. The body is a hint: a non-terminal state moves the task forward directly (forward only, atomically); a
 * terminal state is confirmed by querying CometAPI before it is applied. Answered fast: 2xx for accepted, duplicate
 * or stale, and for a task that no longer exists (recorded as an orphan, see src/store/orphans.ts).
 */
const callbacks: FastifyPluginAsyncTypebox = async (app) => {
  const { store, reconcile, config, clock, orphans } = app.deps

  // Kling's ids are 18-19 digits, past what a JSON number holds exactly: an upstream that sends them bare
  // (`"task_id": 861…`) must not have them rounded into another task's id. Only this plugin's routes parse so;
  // the bounds on every body (src/plugins/bounds.ts) still apply.
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => {
    try {
      done(null, parseJsonBody(body as string, parseJsonKeepingIds))
    } catch (err) {
      done(err as Error, undefined)
    }
  })

  // More callbacks than this for one task in one minute is not CometAPI behaving normally.
  const rate = new CallbackRate()
  const limitRate = (taskId: string) => {
    if (rate.over(taskId, clock())) {
      const headers = { 'retry-after': '60' }
      throw new GatewayError('TOO_MANY_CALLBACKS', 429, 'too many callbacks for this task', undefined, headers)
    }
  }

  app.post('/kling', {
    bodyLimit: CALLBACK_BODY_LIMIT,
    schema: {
      tags: ['callbacks'],
      operationId: 'klingCallback',
      summary: 'Task status callback from CometAPI (the callback_url the gateway sends upstream)',
      description: 'Called by CometAPI only, at the `callback_url` the gateway gave it; no API key: the `token` ' +
        'names the task and proves the gateway issued it. The body is a hint: a non-terminal state moves the task ' +
        'forward at once (200 `applied`, or `duplicate` when it changes nothing); a terminal state is confirmed ' +
        'with CometAPI before it is applied (202 `confirming`); a valid token whose task is gone is recorded as an ' +
        'orphan (202 `orphaned`). Every 2xx means "stop retrying"; repeats are harmless.',
      querystring: Type.Object({ token: Type.Optional(Type.String({ maxLength: 256 })) }),
      body: Type.Object({}, {
        additionalProperties: true,
        maxProperties: 64,
        description: 'a Kling task: `task_id` and `task_status` (or `id` and `status`), `task_info`, `task_result`',
        examples: [{
          task_id: '786543210987654321',
          task_status: 'processing',
          task_info: { external_task_id: '3c6f1d2a-8b9e-4f70-a1c2-d3e4f5a6b7c8' },
          created_at: 1795515330123,
          updated_at: 1795515420456
        }]
      }),
      response: {
        200: json('applied, or a duplicate or stale state that changed nothing', CallbackAnswerSchema,
          { outcome: 'applied', status: 'processing' }),
        202: json('a terminal state being confirmed with CometAPI, or an orphan recorded', CallbackAnswerSchema,
          { outcome: 'confirming', status: 'processing' }),
        ...bodyProblems('64 KiB'),
        400: problem(400, 'not a Kling task, or not this task', {
          detail: '1 invalid field',
          errors: [{ pointer: '/task_id', detail: 'does not belong to this task', location: 'body' }]
        }),
        404: problem(404, 'missing or wrong token (nothing says which)', { detail: 'callback target not found' }),
        429: problem(429, `more than ${MAX_CALLBACKS_PER_MINUTE} callbacks for this task in a minute (on one replica)`,
          { headers: ['Retry-After'] }),
        500: internal(),
        503: unavailable()
      }
    }
  }, async (request, reply) => {
    const token = request.query.token
    const check = token === undefined ? null : checkCallbackToken(callbackKeys(config), token, clock())
    // Only a token we minted can be "expired", so this line cannot be had for free; it tells an operator that
    // a callback came after its task's token ended (or that a secret left CALLBACK_SECRETS_PREVIOUS too early).
    if (check?.ok === false && check.reason === 'expired') request.log.info('callback with an expired token')
    if (check === null || !check.ok) throw new NotFound('callback target')
    const taskId = check.taskId
    const task = await store.getForCallback(taskId)

    const up = parseTask(request.body)
    if (up === null) {
      throw new InvalidRequest([{
        pointer: '/task_status',
        detail: 'the body is not a Kling task (task_id and task_status are needed)',
        location: 'body'
      }])
    }
    if (task === null) {
      // Our token, but the task is gone (a rollback, a deletion): the upstream task may be paid for and finished, so
      // it is recorded and counted, and answered 2xx because no retry of CometAPI's can bring the task back.
      limitRate(taskId)
      const orphan = await orphans.record(taskId, up)
      app.counters.orphanCallbacks.inc({ status: up.status })
      const seen = { upstreamTaskId: up.taskId, externalTaskId: up.externalTaskId, upstreamStatus: up.status }
      request.log.warn({ taskId, ...seen, count: orphan.count },
        'callback for a task that no longer exists: recorded as an orphan (GET /v1/orphans)')
      return await reply.code(202).send({ outcome: 'orphaned', status: up.status })
    }
    if (up.externalTaskId !== null && up.externalTaskId !== task.externalTaskId) {
      throw new InvalidRequest([{
        pointer: '/task_info/external_task_id', detail: 'does not belong to this task', location: 'body'
      }])
    }
    // Another upstream id than the create answered with: a relay that answers creates with its own id (new-api's
    // `task_…`) passes Kling's callbacks on with Kling's. Our external_task_id in it says it is this task's; without
    // it, it is not taken.
    const otherId = task.upstream !== null && up.taskId !== task.upstream.task_id
    if (otherId && up.externalTaskId === null) {
      throw new InvalidRequest([{ pointer: '/task_id', detail: 'does not belong to this task', location: 'body' }])
    }

    limitRate(taskId)

    // Terminal states, any state before we know the upstream id, and any under another id are confirmed with
    // CometAPI first, by the id we know (or, knowing none, the one the callback names).
    if (up.status === 'succeed' || up.status === 'failed' || task.upstream === null || otherId) {
      await reconcile.check(task.id, { confirm: true, upstreamTaskId: task.upstream === null ? up.taskId : undefined })
      return await reply.code(202).send({ outcome: 'confirming', status: task.status })
    }
    // Unconfirmed, so only its status is taken: its free text (task_status_msg) would reach events, SSE and signed
    // webhooks in our name, and a leaked token is enough to send one. The message comes from the query that a
    // callback with a new message queues (src/jobs/apply.ts takes a confirmed message even for the same status).
    const hint = { ...up, statusMsg: null }
    // Most callbacks are repeats: decided on the fields just read, and only a real move reads the whole task (its
    // transition checks again against what is current).
    const outcome = changeFromUpstream(task, hint, clock()) === null
      ? null
      : await store.transition(task.id, t => changeFromUpstream(t, hint, clock()))
    const latest = outcome?.task ?? task
    const said = up.statusMsg !== null && up.statusMsg !== latest.upstream?.status_msg
    if (said) await reconcile.confirmMessage(task.id, up.statusMsg as string)
    const applied = outcome?.applied === true
    request.log.info({ taskId: task.id, upstreamStatus: up.status, applied, confirm: said }, 'callback')
    return { outcome: applied ? 'applied' : 'duplicate', status: latest.status }
  })
}
export default callbacks
