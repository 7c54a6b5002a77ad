/**
 * The creates that ask what the route takes, each judged on CometAPI's answer (and, for masks, on how the task
 * ended): the probe task's body again with the same external_task_id, masks and cfg_scale, another model.
 */
import { answered, errorShape, message, record, wants, type Ctx, type Evidence } from './context.ts'
import { IMAGE_SIZE, maskBase64 } from './images.ts'
import { describeReading } from './replay.ts'
import { cut } from './scrub.ts'
import { baseBody, createTask, secs, type ProbeTask } from './tasks.ts'

/** The same body again, external id included, right after the probe task was accepted. */
export async function duplicate (ctx: Ctx, t: ProbeTask): Promise<void> {
  if (!wants(ctx, 'duplicate-external')) return
  const again = await createTask(ctx, 'duplicate-external', t.body)
  if (again === null) return
  const r = again.reading
  const evidence: Evidence[] = [{ title: 'the second create', exchange: again.create, reading: r }]
  const how = `${answered(again.create)}, ${errorShape(again.create.json)}, ` +
    `${JSON.stringify(cut(message(again.create.json) ?? '', 100))}; ${describeReading(r)}`
  if (r.kind === 'no-answer') return record(ctx, 'duplicate-external', 'inconclusive', how, evidence)
  if (r.kind === 'error') {
    const note = r.retryable
      ? '; a resend would be retried until the attempts run out'
      : '; a resend by SubmitJobs.process would fail our task while the first upstream task runs on'
    return record(ctx, 'duplicate-external', 'confirmed', `refused: ${how}${note}`, evidence)
  }
  if (r.kind === 'task' && r.task.taskId === t.taskId) {
    return record(ctx, 'duplicate-external', 'confirmed', `answered with the same task (idempotent): ${how}`, evidence)
  }
  record(ctx, 'duplicate-external', 'contradicted', `a second task was made (billed): ${how}`, evidence)
}

/** The masks-and-cfg_scale body: the probe's, with both masks matching the pictures' size. */
export function masksBody (): Record<string, unknown> {
  const mask = maskBase64()
  const q = IMAGE_SIZE / 4
  return {
    ...baseBody(null),
    cfg_scale: 0.5,
    static_mask: mask,
    dynamic_masks: [{ mask, trajectories: [{ x: q, y: q }, { x: 3 * q, y: 3 * q }] }]
  }
}

/** The finding of a create asking what the route takes: refused at once, or accepted and then how it ended. */
export function judgeAsked (ctx: Ctx, t: ProbeTask): void {
  const r = t.reading
  const evidence: Evidence[] = [{ title: 'create', exchange: t.create, reading: r }]
  const how = `${answered(t.create)}, ${errorShape(t.create.json)}, ` +
    `${JSON.stringify(cut(message(t.create.json) ?? '', 120))}; ${describeReading(r)}`
  const masks = t.check === 'masks-cfg'
  if (r.kind === 'no-answer') return record(ctx, t.check, 'inconclusive', how, evidence)
  if (r.kind === 'error') {
    if (masks && !r.retryable) {
      const as = '; as the gateway\'s model table has it: it refuses them itself (400) before anything is paid'
      return record(ctx, t.check, 'confirmed', `refused at create: ${how}${as}`, evidence)
    }
    const retried = r.retryable ? '; retryable, so the submit job would send it again and again' : ''
    return record(ctx, t.check, r.retryable ? 'contradicted' : 'confirmed', `refused: ${how}${retried}`, evidence)
  }
  if (r.kind !== 'task') return record(ctx, t.check, 'inconclusive', how, evidence)
  const end = t.terminal
  if (end !== null) evidence.push({ title: `the task ${end.task.status}`, exchange: end.exchange })
  const ended = end === null
    ? `not terminal within --poll-timeout ${secs(ctx.opts.pollTimeoutMs)}`
    : `${end.task.status} after ${secs(end.atMs)}` +
      (end.task.statusMsg === null ? '' : ` ("${cut(end.task.statusMsg, 100)}")`)
  if (!masks) {
    const then = end === null ? 'not followed further' : `then ${ended}`
    return record(ctx, t.check, 'contradicted', `accepted as task ${r.task.taskId} (billed), ${then}`, evidence)
  }
  if (end === null) return record(ctx, t.check, 'inconclusive', `accepted as task ${r.task.taskId}, ${ended}`, evidence)
  const verdict = end.task.status === 'succeed' ? 'contradicted' : 'confirmed'
  const note = verdict === 'contradicted'
    ? ': the fields are taken or ignored (a video does not say which), and the gateway refuses the masks ' +
      '(MODEL_CAPABILITIES can allow them)'
    : ': paid for, and failed: the gateway is right to refuse them first'
  record(ctx, t.check, verdict, `accepted as task ${r.task.taskId}, ${ended}${note}`, evidence)
}
