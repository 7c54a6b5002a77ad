/**
 * `POST /v1/videos/{id}/resolve`: the operator's end of a hold (src/services/resolve.ts), for admin keys only.
 * Registered inside the videos plugin, so it has its auth hook and the `Task` schema.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { GatewayError, InvalidRequest } from '../domain/errors.ts'
import { toView } from '../domain/task.ts'
import type { Caller } from '../plugins/auth.ts'
import { audited, changeable } from '../plugins/audit.ts'
import {
  bodyProblems, internal, invalidField, json, operatorScopeRequired, problem, unauthorized, unavailable
} from '../schemas/common.ts'
import { taskExample } from '../schemas/examples.ts'
import { TaskParamsSchema } from '../schemas/videos.ts'
import { resolveHeld, type Resolution } from '../services/resolve.ts'

const ResolveSchema = Type.Object({
  action: Type.Optional(Type.Union([Type.Literal('adopt'), Type.Literal('fail'), Type.Literal('resend')], {
    description: '`adopt` (the default with `upstream_task_id`): take that upstream task as this one\'s, once ' +
      'upstream confirms it; `fail`: fail the task (`FAILED_BY_OPERATOR`); `resend`: send it again as if never sent'
  })),
  upstream_task_id: Type.Optional(Type.String({ minLength: 1, maxLength: 256, pattern: '^[A-Za-z0-9_.:-]+$' })),
  message: Type.Optional(Type.String({ minLength: 1, maxLength: 500, description: 'with `fail`: the task\'s error' }))
}, { additionalProperties: false, examples: [{ upstream_task_id: '786543210987654321' }] })

const resolve: FastifyPluginAsyncTypebox = async (app) => {
  const { store, upstream, jobs, clock, config, logger } = app.deps
  const deps = { store, upstream, jobs, clock, publicBaseUrl: config.publicBaseUrl ?? '', logger }

  app.post('/:id/resolve', {
    schema: {
      tags: ['admin'],
      operationId: 'resolveVideo',
      summary: 'Resolve a task held for an operator (admin keys only)',
      description: 'A held task (`attention` set) is one whose create may have made a paid upstream task the ' +
        'gateway cannot confirm, so it is neither failed nor sent again. Name the upstream task ' +
        '(`{"upstream_task_id": …}`: adopted once upstream confirms it exists and is not another request\'s), ' +
        'fail it (`{"action": "fail", "message"?: …}`), or send it again (`{"action": "resend"}`: upstream refuses ' +
        'a duplicate `external_task_id`). List held tasks with `GET /v1/videos?attention=true`. Another caller\'s ' +
        'task needs an operator key (OPERATOR_API_KEYS; an admin key is 403). Any key that is not an admin\'s gets ' +
        'the 404 of a route that does not exist.',
      security: [{ bearer: [] }],
      params: TaskParamsSchema,
      body: ResolveSchema,
      response: {
        200: json('the task, resolved', Type.Ref('Task'), taskExample('submitted')),
        ...bodyProblems('1 MiB'),
        400: invalidField('invalid body or id: every bad field is listed', '/upstream_task_id',
          'is required to adopt', 'body'),
        401: unauthorized(),
        403: operatorScopeRequired('task'),
        404: problem(404, 'no such task, or not an admin key (answered as for a route that does not exist)'),
        409: problem(409, 'the task is not held', {
          code: 'NOT_HELD',
          detail: 'the task is processing and not held for an operator; only a held task can be resolved'
        }),
        422: problem(422, 'upstream does not know that task, or it was made for another request', {
          code: 'UPSTREAM_TASK_UNKNOWN', detail: 'upstream has no multi-image2video task 786543210987654321'
        }),
        500: internal(),
        503: unavailable(', or upstream could not be asked for the task named')
      }
    }
  }, async (request) => {
    const caller = request.caller as Caller
    // 404, never 403, and the answer of an unknown route, as for GET /v1/orphans.
    if (!caller.admin) {
      throw new GatewayError('NOT_FOUND', 404, `no route ${request.method} ${request.url.split('?')[0]}`)
    }
    const { action, upstream_task_id: upstreamTaskId, message } = request.body
    const how = resolution(action ?? (upstreamTaskId === undefined ? undefined : 'adopt'), upstreamTaskId, message)
    const fields = { task_id: request.params.id, resolution: how.action }
    return await audited(request.log, 'task.resolve', caller, fields, async note => {
      if (how.action === 'adopt') note({ upstream_task_id: how.upstreamTaskId })
      const task = changeable(caller, await store.get(request.params.id), 'task', note)
      return toView(await resolveHeld(deps, task, how, caller.name))
    })
  })
}
export default resolve

/** The body as one resolution; every field that does not fit the action named is listed. */
function resolution (action: Resolution['action'] | undefined, upstreamTaskId?: string, message?: string):
Resolution {
  const bad = (pointer: string, detail: string) => ({ pointer, detail, location: 'body' as const })
  const errors = []
  if (action === undefined || (action === 'adopt' && upstreamTaskId === undefined)) {
    errors.push(bad('/upstream_task_id', 'is required to adopt (or give `action`: `fail` or `resend`)'))
  }
  if (action !== undefined && action !== 'adopt' && upstreamTaskId !== undefined) {
    errors.push(bad('/upstream_task_id', `is only for adopt, not ${action}`))
  }
  if (message !== undefined && action !== 'fail') errors.push(bad('/message', 'is only for fail'))
  if (errors.length > 0) throw new InvalidRequest(errors)
  if (action === 'fail') return { action, message }
  if (action === 'resend') return { action }
  return { action: 'adopt', upstreamTaskId: upstreamTaskId as string }
}
