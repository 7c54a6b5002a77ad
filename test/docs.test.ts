/**
 * Keeps the docs true. docs/API.md is the contract callers, operators and CometAPI read, so this fails when a
 * variable, a route, an error code, an event type, a create field or a task field exists in the code but not there
 * (or is documented but gone), when a citation names a section the docs do not have, and when any file of the
 * project cites a document outside the repo (a clone has only what is in it). Each failure names what is missing
 * and where to add it.
 */
import { describe, it, expect, beforeAll } from 'vitest'
import { readdirSync, readFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import { pino } from 'pino'
import { buildApp } from '../src/app.ts'
import { EnvSchema, loadConfig } from '../src/config/index.ts'
import { ERROR_CODES } from '../src/domain/errors.ts'
import { EVENT_TYPES } from '../src/domain/task.ts'
import { CREATE_SCHEMAS, TaskSchema } from '../src/schemas/videos.ts'
import { DEFAULT_KIND, VIDEO_KINDS } from '../src/domain/kinds.ts'
import { CometApiAdapter } from '../src/upstream/cometapi.ts'
import { DirectoryBlobStore } from '../src/blobs/dir.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8')
const API = read('docs/API.md')
const DESIGN = read('docs/DESIGN.md')

/** A heading's text as a citation names it: no `#`s, no section number, no backticks. */
const headingName = (line: string): string =>
  line.replace(/^#+\s*/, '').replace(/^\d+\.\s*/, '').replace(/`/g, '').trim()

/** The text under the heading called `name`, down to the next heading of the same or a higher level. */
function section (doc: string, name: string): string {
  const lines = doc.split('\n')
  const start = lines.findIndex(l => /^#{1,6} /.test(l) && headingName(l) === name)
  if (start < 0) throw new Error(`docs/API.md has no section "${name}": the docs test reads it, so keep that heading`)
  const level = /^#+/.exec(lines[start])?.[0].length ?? 1
  const end = lines.findIndex((l, i) => i > start && new RegExp(`^#{1,${level}} `).test(l))
  return lines.slice(start, end < 0 ? undefined : end).join('\n')
}

const headings = (doc: string): string[] => doc.split('\n').filter(l => /^#{1,6} /.test(l)).map(headingName)

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens. */
const slug = (heading: string): string =>
  heading.replace(/^#+\s*/, '').replace(/`/g, '').trim().toLowerCase()
    .replace(/[^\p{L}\p{N} _-]/gu, '').replace(/ /g, '-')

/** `name` written as code (`` `name` ``) somewhere in `text`. */
const mentions = (text: string, name: string): boolean => text.includes(`\`${name}\``)

/** Every method and path the built app serves, from `printRoutes` (Fastify has no other public route list). */
function parseRoutes (tree: string): string[] {
  const found = new Set<string>()
  const stack: string[] = []
  for (const line of tree.split('\n')) {
    const m = /^((?:│ {3}| {4})*)[├└]── (.+?)(?: \(([A-Z, ]+)\))?$/.exec(line)
    if (m === null) continue
    const depth = m[1].length / 4
    stack.length = depth
    stack.push(m[2])
    // `/v1/videos` and `/v1/videos/` are one route to a caller; `:id` is written `{id}`, as OpenAPI does.
    const path = stack.join('').replace(/(.)\/$/, '$1').replace(/:(\w+)/g, '{$1}')
    // The Swagger UI's own pages and assets live under /docs/; /docs itself is documented. (With the router's
    // ignoreTrailingSlash, printRoutes draws the UI's `/docs/static/*` as a `*` right under `/docs`.)
    if (path.startsWith('/docs/') || path === '/docs*') continue
    for (const method of (m[3] ?? '').split(', ')) {
      if (method !== '' && method !== 'HEAD') found.add(`${method} ${path}`)
    }
  }
  return [...found].sort()
}

/** `GET /v1/videos/{id}` written in `text`, not as the start of a longer path. */
const mentionsRoute = (text: string, route: string): boolean =>
  new RegExp(`${route.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?![\\w/{}:-])`).test(text)

/** Files of the project (sources, tests, scripts, docs, README, config), not dependencies or data. */
function projectFiles (dir = ROOT): string[] {
  const skip = new Set(['node_modules', '.git', '.data', 'dist', 'coverage', 'package-lock.json'])
  const text = /\.(ts|js|mjs|cjs|md|lua|json|sh|ya?ml|example)$|^(Dockerfile|run|\.gitignore)$/
  return readdirSync(dir, { withFileTypes: true }).flatMap(e => {
    if (skip.has(e.name)) return []
    const path = join(dir, e.name)
    if (e.isDirectory()) return projectFiles(path)
    return text.test(e.name) ? [relative(ROOT, path)] : []
  })
}

describe('docs/API.md is the contract of what the code does', () => {
  let routes: string[]

  beforeAll(async () => {
    // Built as scripts/openapi.ts builds it: inert deps, a Redis client that never connects, no workers.
    const redis = new Redis({ lazyConnect: true })
    const upstream = new CometApiAdapter({ baseUrl: 'http://127.0.0.1:9', apiKey: 'inert', timeoutMs: 1000 })
    const blobs = new DirectoryBlobStore('/nonexistent')
    const app = await buildApp({ config: loadConfig({}), redis, upstream, blobs, logger: pino({ level: 'silent' }) })
    await app.ready()
    routes = parseRoutes(app.printRoutes({ commonPrefix: false }))
    await app.close()
    redis.disconnect()
    await upstream.close()
  })

  it('documents every environment variable of EnvSchema, and no other', () => {
    const doc = section(API, 'Configuration')
    const missing = Object.keys(EnvSchema.properties).filter(name => !mentions(doc, name))
    expect(missing, 'variables in src/config/index.ts missing from docs/API.md, "Configuration": add a row ' +
      '(name, default, meaning) to its table').toEqual([])
    const documented = [...doc.matchAll(/^\| ([^|]+) \|/gm)]
      .flatMap(([, cell]) => [...cell.matchAll(/`([A-Z][A-Z0-9_]+)`/g)]).map(([, name]) => name)
    const stale = documented.filter(name => !(name in EnvSchema.properties))
    expect(stale, 'variables in docs/API.md, "Configuration" that EnvSchema (src/config/index.ts) does not read: ' +
      'drop their rows').toEqual([])
  })

  it('documents every route the app registers, and no other', () => {
    expect(routes, 'could not read the route table from printRoutes').toContain('POST /v1/videos')
    const doc = section(API, 'Routes')
    const missing = routes.filter(r => !mentionsRoute(doc, r))
    expect(missing, 'routes registered by the app missing from docs/API.md, "Routes": add a row to its table ' +
      '(and a ### section with its fields and answers)').toEqual([])
    const table = [...doc.matchAll(/^\| `([A-Z]+ \/[^`]*)` \|/gm)].map(([, route]) => route)
    const stale = table.filter(r => !routes.includes(r))
    expect(stale, 'routes in the table of docs/API.md, "Routes" that the app does not register').toEqual([])
  })

  it('documents every error code of ERROR_CODES, and every code the code uses is in ERROR_CODES', () => {
    const doc = section(API, 'Error codes')
    const missing = ERROR_CODES.filter(code => !mentions(doc, code))
    expect(missing, 'codes in ERROR_CODES (src/domain/errors.ts) missing from docs/API.md, "Error codes": add a ' +
      'row (code, status, meaning)').toEqual([])

    // `GatewayError` only takes listed codes; these are the places a code is a plain string (task errors, the
    // error handler), found by how they are written.
    const unlisted: string[] = []
    const sources = projectFiles(join(ROOT, 'src')).filter(f => f.endsWith('.ts') && !f.startsWith('src/upstream/'))
    for (const file of sources) {
      const text = read(file)
      const literals = [
        ...text.matchAll(/\bcode: '([A-Z][A-Z0-9_]*)'/g),
        ...text.matchAll(/\bsendProblem\([^,]+, \d+, '([A-Z][A-Z0-9_]*)'/g),
        ...text.matchAll(/\bfail\(task, '([A-Z][A-Z0-9_]*)'/g)
      ].map(([, code]) => code)
      // errno codes (ENOTFOUND) are Node's, handed to Node, never ours to answer with.
      for (const code of literals) {
        const listed = (ERROR_CODES as readonly string[]).includes(code)
        if (!listed && !/^E[A-Z]+$/.test(code)) unlisted.push(`${file}: ${code}`)
      }
    }
    expect(unlisted, 'error codes used in src/ but missing from ERROR_CODES (src/domain/errors.ts): add them there ' +
      'and to docs/API.md, "Error codes"').toEqual([])

    // Upstream codes pass through to task.error.code; each one, or its family (`KLING_<n>`), is documented. The
    // adapters and their shared client make them, as `code: 'X'`, a template `X_${…}`, or through `e('X', …)`.
    const adapters = projectFiles(join(ROOT, 'src/upstream')).map(read).join('\n')
    const upstream = [
      ...[...adapters.matchAll(/\bcode: '([A-Z][A-Z0-9_]*)'/g)].map(([, code]) => code),
      ...[...adapters.matchAll(/\be\('([A-Z][A-Z0-9_]*)'/g)].map(([, code]) => code),
      ...[...adapters.matchAll(/`([A-Z][A-Z0-9]*_(?:[A-Z0-9]+_)*)\$\{/g)].map(([, prefix]) => prefix)
    ]
    const undocumented = [...new Set(upstream)].filter(code => !doc.includes(`\`${code}`))
    expect(undocumented, 'upstream error codes of src/upstream/ missing from docs/API.md, "Error codes" ' +
      '(the upstream codes table)').toEqual([])
  })

  it('documents every event type of EVENT_TYPES', () => {
    const doc = section(API, 'Events')
    const missing = EVENT_TYPES.filter(type => !mentions(doc, type))
    expect(missing, 'event types in EVENT_TYPES (src/domain/task.ts) missing from docs/API.md, "Events": add a ' +
      'row (type, when) to its table').toEqual([])
  })

  it('documents every create field and every field of the task object', () => {
    // Each kind's fields in its route's section; the default kind's route is `POST /v1/videos`.
    const fields = VIDEO_KINDS.flatMap(kind => {
      const name = kind === DEFAULT_KIND ? 'POST /v1/videos' : `POST /v1/videos/${kind}`
      const create = section(API, name)
      return Object.keys(CREATE_SCHEMAS[kind].properties).filter(f => !mentions(create, f)).map(f => `${name}: ${f}`)
    })
    expect(fields, 'create fields of CREATE_SCHEMAS (src/schemas/videos.ts) missing from docs/API.md, in the ' +
      'section of their kind\'s route: add a row (field, rule) to its table').toEqual([])
    const task = section(API, 'The task object')
    const shown = Object.keys(TaskSchema.properties).filter(f => !task.includes(`"${f}"`))
    expect(shown, 'task fields of TaskSchema (src/schemas/videos.ts) missing from docs/API.md, "The task object"')
      .toEqual([])
  })
})

describe('the docs stand on their own', () => {
  // This file has to spell the patterns it looks for, so it is the one file not read.
  const files = projectFiles().filter(f => f !== 'test/docs.test.ts')

  it('no file cites a document outside the repo', () => {
    const outside = [/\.\.\/shared\b/, /\bshared\/research\b/, /\/work\/shared\b/, /perf-reliability/,
      /upstream-api\.md/, /\bupstream-api §/, /\baesthetics\b/, /\bpeers\.md\b/]
    const found: string[] = []
    for (const file of files) {
      const lines = read(file).split('\n')
      for (const [i, line] of lines.entries()) {
        // API.md and DESIGN.md are docs/API.md and docs/DESIGN.md; inside docs/ they are siblings.
        const bare = !file.startsWith('docs/') && /(?<!docs\/)\b(API|DESIGN)\.md\b/.test(line)
        if (bare || outside.some(p => p.test(line))) found.push(`${file}:${i + 1}: ${line.trim()}`)
      }
    }
    expect(found, 'cite docs/API.md or docs/DESIGN.md (`docs/API.md, "<section>"`) instead, or drop the reference ' +
      'where the comment stands on its own; copy what is needed into docs/').toEqual([])
  })

  it('every citation of docs/API.md or docs/DESIGN.md names a section they have, and every link an anchor', () => {
    const docs: Record<string, string> = { 'API.md': API, 'DESIGN.md': DESIGN }
    const bad: string[] = []
    for (const file of files) {
      // A citation may wrap across comment lines: read it with the line breaks and comment markers gone.
      const text = read(file).replace(/\n\s*(?:\*(?!\/)|\/\/|#|--)?\s*/g, ' ')
      // `docs/API.md, "Routes"`, also as a Markdown link (`[…](docs/API.md), "Routes"`); `"<section>"` is prose.
      for (const [, doc, name] of text.matchAll(/\b(API\.md|DESIGN\.md)`?\)?,\s+"([^"<]+)"/g)) {
        if (!headings(docs[doc]).includes(name)) bad.push(`${file}: docs/${doc}, "${name}" (no such heading)`)
      }
      if (!file.endsWith('.md')) continue
      for (const [, target, anchor] of read(file).matchAll(/\]\((?:docs\/)?((?:API|DESIGN)\.md)?#([^)\s]+)\)/g)) {
        const body = target === undefined ? read(file) : docs[target]
        const anchors = body.split('\n').filter(l => /^#{1,6} /.test(l)).map(slug)
        const link = `${file}: link to ${target ?? file}#${anchor} (no such heading)`
        if (!anchors.includes(anchor) && !bad.includes(link)) bad.push(link)
      }
    }
    expect(bad, 'fix the citation or link, or keep the heading it names').toEqual([])
  })
})
