/**
 * Every assumption the probe checks: what the code takes for granted about CometAPI's Kling route (docs/DESIGN.md,
 * "Upstream: CometAPI's Kling route"), where it relies on it (so a contradiction points at what to change), and
 * what checking it costs. The ids are what `--only` takes and what each report line starts with.
 */

/** Bumped whenever a check is added, dropped or judged differently, so two reports can be compared. */
export const PROBE_VERSION = '2'

/** What every create of the probe asks for: the cheapest task the route makes. */
export const CREATE_SPEC = { model: 'kling-v1-6', mode: 'std', duration: '5', kind: 'multi-image2video' } as const

export type Group = 'free' | 'task' | 'callbacks'

export interface CheckSpec {
  id: string
  group: Group
  /** The assumption, as one clause (never " — ": that separates the fields of a report line). */
  assumption: string
  /** Where the code relies on it: a file and its function. */
  reliesOn: string[]
  /** Creates the check makes on top of the probe task (each one billed when CometAPI accepts it). */
  creates: number
  /** It reads the probe task (one create, shared by every check that reads it). */
  usesTask: boolean
}

const NOT_FOUND_CODE = [
  'src/upstream/cometapi.ts CometApiAdapter.isNotFound',
  'src/upstream/kling.ts klingNotFound',
  'src/upstream/adapter.ts KlingWireAdapter.query'
]

export const CHECKS: CheckSpec[] = [
  {
    id: 'bad-key',
    group: 'free',
    assumption: 'a wrong key is refused with HTTP 401 in CometAPI\'s gateway shape {error: {message, type, code}} ' +
      'on create and query alike, and the adapter takes it as final (no retry, nothing created)',
    reliesOn: ['src/upstream/cometapi.ts CometApiAdapter.classify (gatewayError)',
      'src/jobs/submit.ts SubmitJobs.process (a final error fails the task)'],
    creates: 0,
    usesTask: false
  },
  {
    id: 'not-found-id',
    group: 'free',
    assumption: 'a query for an unknown task id is answered HTTP 400/404 with Kling\'s code 1201/1203 (or ' +
      'CometAPI\'s task_not_exist), which the adapter reads as "no such task"',
    reliesOn: [...NOT_FOUND_CODE, 'src/jobs/reconcile.ts ReconcileJobs.checkTask (no such task = unknown, not failed)'],
    creates: 0,
    usesTask: false
  },
  {
    id: 'not-found-external',
    group: 'free',
    assumption: 'a query for an unknown external_task_id is answered as for an unknown task id, which the adapter ' +
      'reads as "no such task"',
    reliesOn: [...NOT_FOUND_CODE, 'src/jobs/submit.ts SubmitJobs.process (the look-up after an uncertain create: ' +
      '"no such task" waits out SUBMIT_UNCONFIRMED_GRACE_MS, a final error fails the task)'],
    creates: 0,
    usesTask: false
  },
  {
    id: 'rate-limit',
    group: 'free',
    assumption: 'a burst CometAPI limits is answered 429 with Retry-After, which the adapter reads as retryable ' +
      'and the submit queue waits out',
    reliesOn: ['src/upstream/cometapi.ts CometApiAdapter.classify (gatewayError)',
      'src/upstream/client.ts parseRetryAfter', 'src/jobs/submit.ts backoffDelay'],
    creates: 0,
    usesTask: false
  },
  {
    id: 'create',
    group: 'task',
    assumption: 'a create is answered HTTP 2xx with Kling\'s envelope: code 0, a message, data.task_id a numeric ' +
      'string and data.task_status "submitted" (request_id may be missing)',
    reliesOn: ['src/upstream/adapter.ts KlingWireAdapter.create', 'src/upstream/client.ts isSuccessCode',
      'src/upstream/schemas.ts idString, parseJsonKeepingIds'],
    creates: 0,
    usesTask: true
  },
  {
    id: 'poll',
    group: 'task',
    assumption: 'a query by task id answers Kling\'s envelope whose data.task_status moves forward through ' +
      'submitted, processing, then succeed or failed',
    reliesOn: ['src/upstream/schemas.ts parseTask, normalizeStatus',
      'src/domain/upstream-state.ts changeFromUpstream', 'src/jobs/reconcile.ts ReconcileJobs.checkTask'],
    creates: 0,
    usesTask: true
  },
  {
    id: 'timestamps',
    group: 'task',
    assumption: 'created_at and updated_at are Unix milliseconds, near our clock',
    reliesOn: ['src/upstream/schemas.ts toMs',
      'src/domain/upstream-state.ts changeFromUpstream (upstream_expires_at = updated_at + 30 days)'],
    creates: 0,
    usesTask: true
  },
  {
    id: 'lookup-external',
    group: 'task',
    assumption: 'the query path takes our external_task_id in place of the task id and finds the same task, ' +
      'right after the create',
    reliesOn: ['src/jobs/submit.ts SubmitJobs.process (adopts the task after an uncertain create)',
      'src/jobs/reconcile.ts ReconcileJobs.checkTask (asks by external id before the create answer is known)'],
    creates: 0,
    usesTask: true
  },
  {
    id: 'duplicate-external',
    group: 'task',
    assumption: 'a second create with the same external_task_id is refused: no second task is made or paid for',
    reliesOn: ['src/jobs/submit.ts SubmitJobs.process (sends again after SUBMIT_UNCONFIRMED_GRACE_MS, counting on ' +
      'the refusal)', 'src/upstream/cometapi.ts CometApiAdapter.classify (what the refusal becomes)'],
    creates: 1,
    usesTask: true
  },
  {
    id: 'download',
    group: 'task',
    assumption: 'a result URL answers a plain GET (no key, no redirect) with 200, a Content-Length and the video',
    reliesOn: ['src/jobs/copy.ts CopyJobs.download (follows no redirect, needs 200, checks Content-Length against ' +
      'MIRROR_MAX_BYTES)'],
    creates: 0,
    usesTask: true
  },
  {
    id: 'url-expiry',
    group: 'task',
    assumption: 'a result URL lives at least 30 days after its task finished',
    reliesOn: ['src/domain/upstream-state.ts UPSTREAM_RETENTION_MS, changeFromUpstream (upstream_expires_at)',
      'src/jobs/copy.ts CopyJobs.copy (copies after video.succeeded)'],
    creates: 0,
    usesTask: true
  },
  {
    id: 'masks-cfg',
    group: 'task',
    assumption: 'kling-v1-6 multi-image2video has no masks: a create with static_mask and dynamic_masks (and ' +
      'cfg_scale) is refused for good, or paid for and failed, so the gateway refuses the masks itself (400)',
    reliesOn: ['src/domain/models.ts DEFAULT_MODEL_TABLE, modelProblems', 'src/domain/create.ts checkCreate'],
    creates: 1,
    usesTask: false
  },
  {
    id: 'other-model',
    group: 'task',
    assumption: 'multi-image2video takes only kling-v1-6: another model is refused at create with a final error',
    reliesOn: ['src/config/index.ts EnvSchema (ALLOWED_MODELS defaults to kling-v1-6)',
      'src/upstream/cometapi.ts CometApiAdapter.classify (a retryable refusal is sent again and again)',
      'simulator/app.ts MODELS'],
    creates: 1,
    usesTask: false
  },
  {
    id: 'callback-count',
    group: 'callbacks',
    assumption: 'callbacks arrive for the task: any number of non-terminal ones and a terminal one',
    reliesOn: ['src/routes/callbacks.ts callbacks (POST /callbacks/kling moves the task at once)',
      'src/jobs/reconcile.ts ReconcileJobs.sweep (what finishes a task without them)'],
    creates: 0,
    usesTask: true
  },
  {
    id: 'callback-body',
    group: 'callbacks',
    assumption: 'a callback body is Kling\'s flat task object (task_id, task_status, task_info.external_task_id; ' +
      'no envelope) with our task\'s ids, which parseTask reads',
    reliesOn: ['src/upstream/schemas.ts parseTask',
      'src/routes/callbacks.ts callbacks (task_id and external_task_id must be the task\'s)'],
    creates: 0,
    usesTask: true
  },
  {
    id: 'callback-token',
    group: 'callbacks',
    assumption: 'the query string of our callback_url (the token and any other field) reaches us unchanged',
    reliesOn: ['src/jobs/submit.ts SubmitJobs.callbackUrl', 'src/domain/callback-token.ts verifyCallbackToken',
      'src/routes/callbacks.ts callbacks (reads request.query.token)'],
    creates: 0,
    usesTask: true
  },
  {
    id: 'callback-headers',
    group: 'callbacks',
    assumption: 'callbacks carry no signature we could check (no webhook-signature header), so the token in the ' +
      'URL is what authenticates them',
    reliesOn: ['src/domain/callback-token.ts callbackToken', 'src/routes/callbacks.ts callbacks'],
    creates: 0,
    usesTask: true
  },
  {
    id: 'callback-retry',
    group: 'callbacks',
    assumption: 'a callback we answer 500 is sent again',
    reliesOn: ['src/routes/callbacks.ts callbacks (answers 503 while Redis is briefly down, counting on a retry ' +
      'or on reconciliation)', 'src/jobs/reconcile.ts ReconcileJobs.sweep'],
    creates: 0,
    usesTask: true
  }
]

export const CHECK_IDS = CHECKS.map(c => c.id)
export const GROUPS: Group[] = ['free', 'task', 'callbacks']

export function spec (id: string): CheckSpec {
  const found = CHECKS.find(c => c.id === id)
  if (found === undefined) throw new Error(`no check ${id}`)
  return found
}

/** `--only` values (ids or group names, comma-separated or repeated) as check ids in catalog order. */
export function selectChecks (only: string[] | undefined): { ids: string[], unknown: string[] } {
  if (only === undefined || only.length === 0) return { ids: [...CHECK_IDS], unknown: [] }
  const asked = only.flatMap(v => v.split(',')).map(v => v.trim()).filter(v => v !== '')
  const unknown = asked.filter(v => !CHECK_IDS.includes(v) && !(GROUPS as string[]).includes(v))
  const ids = CHECKS.filter(c => asked.includes(c.id) || asked.includes(c.group)).map(c => c.id)
  return { ids, unknown }
}

export interface Plan {
  /** The creates each selected check may make, in the order they are made. */
  items: Array<{ check: string, creates: number, what: string }>
  total: number
}

/** What the selected checks may create, in the order the probe makes them (the probe task first). */
export function planCreates (ids: string[], withReceiver: boolean, otherModel: string): Plan {
  const counts = ids.map(spec).filter(c => c.group !== 'callbacks' || withReceiver)
  const items: Plan['items'] = []
  const { model, mode, duration } = CREATE_SPEC
  if (counts.some(c => c.usesTask)) {
    const readers = counts.filter(c => c.usesTask).map(c => c.id).join(', ')
    const what = `the probe task (${model}, ${mode}, ${duration} s), read by ${readers}`
    items.push({ check: 'create', creates: 1, what })
  }
  const extra: Record<string, string> = {
    'duplicate-external': 'the probe task\'s body again: billed only if CometAPI makes a second task',
    'masks-cfg': `${model} ${mode} ${duration} s with masks and cfg_scale: billed if accepted`,
    'other-model': `${otherModel}, ${mode} ${duration} s: billed only if CometAPI accepts it`
  }
  for (const c of counts) if (c.creates > 0) items.push({ check: c.id, creates: c.creates, what: extra[c.id] })
  return { items, total: items.reduce((n, i) => n + i.creates, 0) }
}
