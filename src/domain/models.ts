/**
 * The model capability table: which models make each kind, in which modes and durations, and with which of the
 * fields that not every model takes (cfg_scale, the masks, camera_control, image_tail). Kling accepts some of these
 * and then ignores them or fails the task after it was paid for; CometAPI's page for multi-image2video says not to
 * send masks at all. So a create is checked against this table before anything is stored (docs/API.md, "Models").
 *
 * How it combines with ALLOWED_MODELS: a model must be in ALLOWED_MODELS (the operator's list, every kind) *and*
 * have an entry for the kind here, its own or the kind's `*` (any other model). ALLOWED_MODELS never grants a
 * capability and the table never lets in a model ALLOWED_MODELS leaves out. MODEL_CAPABILITIES replaces the default
 * entry of each kind it names, whole; the kinds it leaves out keep theirs. Pure: no I/O, every problem named.
 */
import { CREATE_SCHEMAS } from '../schemas/videos.ts'
import type { FieldError } from './errors.ts'
import { VIDEO_KINDS, type VideoKind } from './kinds.ts'

export const MODES = ['std', 'pro'] as const
export type Mode = typeof MODES[number]
export const DURATIONS = ['5', '10'] as const
export type Duration = typeof DURATIONS[number]

/** A field group a model may or may not take, and the create fields that use it. */
export const FEATURES = {
  cfg_scale: ['cfg_scale'],
  masks: ['static_mask', 'dynamic_masks'],
  camera_control: ['camera_control'],
  image_tail: ['image_tail']
} as const
export type Feature = keyof typeof FEATURES

/** Supported, not supported, or only in some modes and durations (Kling's motion brush is 5 s only on kling-v1). */
export type Support = boolean | { modes: Mode[], durations: Duration[] }

/** What one model does on one kind. Left out of an entry: modes and durations = all of them, a feature = not. */
export interface ModelCapability {
  modes: Mode[]
  durations: Duration[]
  features: Partial<Record<Feature, Support>>
}

/** kind → model name (or `*`, any model without an entry of its own) → its capability. */
export type ModelTable = Record<VideoKind, Record<string, ModelCapability>>

/** The features whose fields a kind's schema has: only those can be named for it. */
export function featuresOf (kind: VideoKind): Feature[] {
  const fields = CREATE_SCHEMAS[kind].properties as Record<string, unknown>
  return (Object.keys(FEATURES) as Feature[]).filter(f => FEATURES[f].some(field => field in fields))
}

const entry = (features: ModelCapability['features'], modes: Mode[] = [...MODES]): ModelCapability =>
  ({ modes, durations: [...DURATIONS], features })

/**
 * The defaults, from Kling's API reference and capability map: multi-image2video is kling-v1-6 only, with no masks;
 * the motion brush (masks) on image2video is kling-v1 (std and pro, 5 s) and kling-v1-5 (pro, 5 s), and no later
 * model. Other models on image2video and text2video (`*`) keep the fields every kind's schema has, and upstream
 * judges the rest, as before the table existed; cfg_scale stays on multi-image2video, as it was accepted before.
 */
const I2V = { cfg_scale: true, camera_control: true, image_tail: true } as const
export const DEFAULT_MODEL_TABLE: ModelTable = {
  'multi-image2video': { 'kling-v1-6': entry({ cfg_scale: true }) },
  image2video: {
    'kling-v1': entry({ ...I2V, masks: { modes: [...MODES], durations: ['5'] } }),
    'kling-v1-5': entry({ ...I2V, masks: { modes: ['pro'], durations: ['5'] } }),
    '*': entry({ ...I2V, masks: false })
  },
  text2video: { '*': entry({ cfg_scale: true, camera_control: true }) }
}

const MODEL_NAME = /^(\*|[A-Za-z0-9._-]{1,64})$/
const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v)

/** A non-empty list of distinct allowed values (numbers accepted for durations), or null with a problem named. */
function listOf<T extends string> (at: string, value: unknown, allowed: readonly T[], problems: string[]): T[] | null {
  const items = Array.isArray(value) ? value.map(v => typeof v === 'number' ? String(v) : v) : null
  if (items === null || items.length === 0 || items.some(v => !(allowed as readonly unknown[]).includes(v)) ||
    new Set(items).size !== items.length) {
    problems.push(`${at} must be a non-empty list of distinct values of: ${allowed.join(', ')}`)
    return null
  }
  return items as T[]
}

function supportOf (at: string, value: unknown, model: ModelCapability, problems: string[]): Support | null {
  if (typeof value === 'boolean') return value
  if (!isObj(value)) {
    problems.push(`${at} must be true, false or { "modes"?: [...], "durations"?: [...] }`)
    return null
  }
  const unknown = Object.keys(value).filter(k => k !== 'modes' && k !== 'durations')
  for (const k of unknown) problems.push(`${at}.${k} is not a key of a feature (modes, durations)`)
  const modes = value.modes === undefined ? model.modes : listOf(`${at}.modes`, value.modes, MODES, problems)
  const durations = value.durations === undefined
    ? model.durations
    : listOf(`${at}.durations`, value.durations, DURATIONS, problems)
  if (modes === null || durations === null || unknown.length > 0) return null
  // A feature limited to modes or durations the model does not have could never be used: a mistake, say so.
  if (modes.some(m => !model.modes.includes(m)) || durations.some(d => !model.durations.includes(d))) {
    problems.push(`${at} names modes or durations the model itself does not have`)
    return null
  }
  return { modes, durations }
}

function capabilityOf (kind: VideoKind, at: string, value: unknown, problems: string[]): ModelCapability | null {
  if (!isObj(value)) {
    problems.push(`${at} must be an object (modes, durations, and the features ${featuresOf(kind).join(', ')})`)
    return null
  }
  const before = problems.length
  const modes = value.modes === undefined ? [...MODES] : listOf(`${at}.modes`, value.modes, MODES, problems)
  const durations = value.durations === undefined
    ? [...DURATIONS]
    : listOf(`${at}.durations`, value.durations, DURATIONS, problems)
  const capability: ModelCapability = { modes: modes ?? [], durations: durations ?? [], features: {} }
  const allFeatures = Object.keys(FEATURES) as string[]
  for (const [key, v] of Object.entries(value)) {
    if (key === 'modes' || key === 'durations') continue
    if (!allFeatures.includes(key)) {
      problems.push(`${at}.${key} is not a capability (modes, durations, ${allFeatures.join(', ')})`)
    } else if (!featuresOf(kind).includes(key as Feature)) {
      problems.push(`${at}.${key}: ${kind} has no ${FEATURES[key as Feature].join('/')} field`)
    } else if (modes !== null && durations !== null) {
      const support = supportOf(`${at}.${key}`, v, capability, problems)
      if (support !== null) capability.features[key as Feature] = support
    }
  }
  return problems.length > before ? null : capability
}

/**
 * The table MODEL_CAPABILITIES (JSON) makes: each kind it names replaces that kind's default entry, whole. Every
 * bad entry is pushed to `problems` by its path (`image2video.kling-v1.masks`), prefixed with the variable's name.
 */
export function parseModelTable (json: string | undefined, problems: string[]): ModelTable {
  const table: ModelTable = structuredClone(DEFAULT_MODEL_TABLE)
  if (json === undefined) return table
  const found: string[] = []
  let raw: unknown
  try {
    raw = JSON.parse(json)
  } catch {
    problems.push('MODEL_CAPABILITIES: is not valid JSON')
    return table
  }
  if (!isObj(raw)) {
    problems.push(`MODEL_CAPABILITIES: must be a JSON object whose keys are kinds (${VIDEO_KINDS.join(', ')})`)
    return table
  }
  for (const [kind, models] of Object.entries(raw)) {
    if (!(VIDEO_KINDS as readonly string[]).includes(kind)) {
      found.push(`${kind} is not a kind (${VIDEO_KINDS.join(', ')})`)
      continue
    }
    if (!isObj(models) || Object.keys(models).length === 0) {
      found.push(`${kind} must be an object of at least one model name (or "*") to its capability`)
      continue
    }
    const entries: Record<string, ModelCapability> = {}
    for (const [i, [model, value]] of Object.entries(models).entries()) {
      // A key that is not a name is not echoed (it is whatever was typed); its entry is still checked.
      const named = MODEL_NAME.test(model)
      if (!named) found.push(`${kind}: model ${i + 1} is not a model name (A-Za-z0-9._-, or *)`)
      const capability = capabilityOf(kind as VideoKind, `${kind}.${named ? model : `#${i + 1}`}`, value, found)
      if (capability !== null && named) entries[model] = capability
    }
    table[kind as VideoKind] = entries
  }
  problems.push(...found.map(p => `MODEL_CAPABILITIES: ${p}`))
  return table
}

const FEATURE_NAMES: Record<Feature, string> = {
  cfg_scale: 'cfg_scale',
  masks: 'masks (static_mask, dynamic_masks)',
  camera_control: 'camera_control',
  image_tail: 'image_tail (an end frame)'
}
/** Why the default table says no, where Kling or CometAPI say it themselves. */
const WHY: Partial<Record<VideoKind, Partial<Record<Feature, string>>>> = {
  'multi-image2video': { masks: 'Kling\'s multi-image2video has no masks, and CometAPI says not to send them there' },
  image2video: { masks: 'Kling\'s motion brush is kling-v1 and kling-v1-5 only; see MODEL_CAPABILITIES' }
}
const seconds = (durations: readonly string[]) => durations.map(d => `${d} s`).join(' or ')

/**
 * What the table says about a create of `kind` with the request as it will be stored (defaults filled in) and the
 * body as sent (which optional fields were given): every problem, each at its field's pointer. The model is already
 * known to be in ALLOWED_MODELS.
 */
export function modelProblems (
  kind: VideoKind, request: Record<string, unknown>, body: Record<string, unknown>, table: ModelTable
): FieldError[] {
  const errors: FieldError[] = []
  const problem = (pointer: string, detail: string) => { errors.push({ pointer, detail, location: 'body' }) }
  const model = String(request.model_name)
  const models = table[kind]
  const capability = models[model] ?? models['*']
  const listed = Object.keys(models).filter(m => m !== '*')
  if (capability === undefined) {
    problem('/model_name', `${model} does not make ${kind} (models for ${kind}: ${listed.join(', ') || 'none'}; ` +
      'see MODEL_CAPABILITIES)')
    return errors
  }
  const mode = String(request.mode)
  const duration = String(request.duration)
  const on = `${model} on ${kind}`
  if (!(capability.modes as string[]).includes(mode)) {
    problem('/mode', `${on} is made only in mode ${capability.modes.join(' or ')}`)
  }
  if (!(capability.durations as string[]).includes(duration)) {
    problem('/duration', `${on} is made only ${seconds(capability.durations)} long`)
  }
  for (const feature of featuresOf(kind)) {
    const given = FEATURES[feature].filter(field => body[field] !== undefined)
    if (given.length === 0) continue
    const support = capability.features[feature] ?? false
    let detail: string | undefined
    if (support === false) {
      detail = `${FEATURE_NAMES[feature]} is not supported by ${on} (${WHY[kind]?.[feature] ?? 'the model ' +
        'capability table, MODEL_CAPABILITIES'})`
    } else if (support !== true && (!(support.modes as string[]).includes(mode) ||
      !(support.durations as string[]).includes(duration))) {
      detail = `${FEATURE_NAMES[feature]} is supported by ${on} only in mode ${support.modes.join(' or ')}, ` +
        `${seconds(support.durations)} (this request: ${mode}, ${duration} s)`
    }
    if (detail !== undefined) for (const field of given) problem(`/${field}`, detail)
  }
  return errors
}
