// The dashboard: hash routes (#/tasks, #/tasks/<id>, #/deliveries, #/endpoints, #/usage), each a view that
// renders from the /v1 API and stops everything it started (polls, SSE, object URLs) when the route changes.
import { api, ApiError, blob, events, key, plain } from './api.js'

const POLL_MS = 2500
const STATUSES = ['queued', 'submitted', 'processing', 'succeeded', 'failed', 'canceled']
const $ = (id) => document.getElementById(id)

/** An element, its attributes (`on*` are listeners) and children (strings are text: never HTML). */
function h (tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value)
    else if (name === 'class') el.className = value
    else el.setAttribute(name, value === true ? '' : String(value))
  }
  el.append(...children.flat().filter(c => c !== null && c !== undefined && c !== false))
  return el
}

const when = (iso) => iso ? new Date(iso).toLocaleString() : '—'
const badge = (status) => h('span', { class: `badge s-${status}` }, status)
const announce = (text) => { $('live').textContent = text }
const field = (name, ...value) => [h('dt', {}, name), h('dd', {}, ...(value.length === 0 ? ['—'] : value))]

/** The session: who the key is. An admin key is told apart by the admin-only orphans route (404 for others). */
const session = { admin: false, name: null }

async function signIn () {
  const usage = await api('/v1/usage')
  session.admin = await api('/v1/orphans?limit=1').then(() => true, (err) => {
    if (err instanceof ApiError && err.status === 404) return false
    throw err
  })
  session.name = session.admin ? null : usage.data[0]?.caller ?? null
  $('who').textContent = session.admin ? 'admin key: every caller' : `caller ${session.name}`
}

function showLogin (message = '') {
  key.clear()
  $('login').hidden = false
  $('nav').hidden = true
  $('signout').hidden = true
  $('who').textContent = ''
  $('view').replaceChildren()
  $('login-error').textContent = message
  $('key').focus()
}

/** A failed call: 401 means the key is gone (sign in again); anything else is shown where the view is. */
function report (err, where) {
  if (err?.name === 'AbortError') return
  if (err instanceof ApiError && err.status === 401) return showLogin('The key was not accepted.')
  const text = err instanceof ApiError && err.code !== null ? `${err.code}: ${err.message}` : String(err?.message)
  where.replaceChildren(h('p', { class: 'error', role: 'alert' }, text))
}

/** Runs `fn` now and every POLL_MS until `signal` aborts; a slow answer delays the next, never stacks. */
function poll (signal, fn) {
  let timer
  const tick = async () => {
    await fn().catch(() => {})
    if (!signal.aborted) timer = setTimeout(tick, POLL_MS)
  }
  signal.addEventListener('abort', () => clearTimeout(timer))
  return tick()
}

function parseHash () {
  const raw = window.location.hash.replace(/^#\/?/, '')
  const [path, query = ''] = raw.split('?')
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query) }
}

// ---- Tasks ------------------------------------------------------------------------------------------------

function tasksView (root, signal, query) {
  const status = h('select', { id: 'f-status', name: 'status' }, h('option', { value: '' }, 'any'),
    STATUSES.map(s => h('option', { value: s, selected: query.get('status') === s }, s)))
  const caller = h('input', { id: 'f-caller', name: 'caller', value: query.get('caller') ?? '', maxlength: 64 })
  const reference = h('input', { id: 'f-reference', name: 'reference', value: query.get('reference') ?? '' })
  const before = h('input',
    { id: 'f-before', name: 'before', type: 'datetime-local', value: query.get('before') ?? '' })
  const search = h('input', { id: 'f-search', name: 'search', type: 'search', value: query.get('search') ?? '' })
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter tasks' },
    h('div', {}, h('label', { for: 'f-status' }, 'Status'), status),
    session.admin ? h('div', {}, h('label', { for: 'f-caller' }, 'Caller'), caller) : null,
    h('div', {}, h('label', { for: 'f-reference' }, 'Reference'), reference),
    h('div', {}, h('label', { for: 'f-before' }, 'Created before'), before),
    h('div', {}, h('label', { for: 'f-search' }, 'Search (id, reference, metadata)'), search),
    h('button', { type: 'submit' }, 'Apply'))
  form.addEventListener('submit', (e) => {
    e.preventDefault()
    const q = new URLSearchParams()
    for (const [name, value] of new FormData(form)) if (value !== '') q.set(name, String(value))
    window.location.hash = `#/tasks${q.size > 0 ? `?${q}` : ''}`
  })
  const body = h('tbody')
  const table = h('table', { id: 'tasks' },
    h('caption', { class: 'mono' }, ''),
    h('thead', {}, h('tr', {}, ['Created', 'Task', 'Reference', 'Kind', 'Status', 'Upstream task', 'Error']
      .map(t => h('th', { scope: 'col' }, t)))), body)
  const more = h('button', { type: 'button', hidden: true }, 'Load more')
  const problem = h('div')
  root.replaceChildren(h('h2', { tabindex: -1 }, 'Tasks'), form, problem, table, more)

  // The list is the newest `pages` pages; each poll reads them again so new tasks and status changes show.
  let pages = 1
  const params = new URLSearchParams({ limit: '50' })
  if (query.get('status')) params.set('status', query.get('status'))
  if (query.get('reference')) params.set('reference', query.get('reference'))
  if (query.get('caller') && session.admin) params.set('caller', query.get('caller'))
  // Newest first, so "created before T" is the cursor of a task made at T (docs/API.md: `<ms>:<id>`).
  if (query.get('before')) params.set('cursor', `${new Date(query.get('before')).getTime()}:0`)
  const needle = (query.get('search') ?? '').toLowerCase()
  const matches = (t) => needle === '' ||
    [t.id, t.reference ?? '', JSON.stringify(t.metadata ?? {})].some(s => s.toLowerCase().includes(needle))

  const load = async () => {
    const tasks = []
    let cursor = params.get('cursor')
    let next = null
    for (let i = 0; i < pages; i++) {
      const q = new URLSearchParams(params)
      if (cursor) q.set('cursor', cursor)
      const page = await api(`/v1/videos?${q}`, { signal })
      tasks.push(...page.data)
      next = page.next_cursor
      if (next === null) break
      cursor = next
    }
    if (signal.aborted) return
    const shown = tasks.filter(matches)
    body.replaceChildren(...shown.map(t => h('tr', { 'data-id': t.id },
      h('td', {}, when(t.created_at)),
      h('td', { class: 'mono' }, h('a', { href: `#/tasks/${encodeURIComponent(t.id)}` }, t.id)),
      h('td', {}, t.reference ?? '—'),
      h('td', {}, t.kind),
      h('td', {}, badge(t.status)),
      h('td', { class: 'mono' }, t.upstream?.task_id ?? '—'),
      h('td', {}, t.error?.code ?? '—'))))
    if (shown.length === 0) body.append(h('tr', {}, h('td', { colspan: 7 }, 'No tasks match.')))
    more.hidden = next === null
    problem.replaceChildren()
    table.caption.textContent = `${shown.length} task${shown.length === 1 ? '' : 's'}`
    announce(`Tasks updated ${new Date().toLocaleTimeString()}: ${shown.length} shown`)
  }
  more.addEventListener('click', () => { pages++; load().catch(err => report(err, problem)) })
  poll(signal, () => load().catch(err => { report(err, problem); throw err }))
}

// ---- One task -----------------------------------------------------------------------------------------------

/** An image as the task's `request` keeps it: an https URL, or the metadata of a Base64 image. */
function imageItem (label, image) {
  if (image === undefined || image === null) return null
  if (typeof image === 'string') return h('li', {}, `${label}: `, h('span', { class: 'mono' }, image))
  const { format, width, height, bytes, sha256 } = image
  return h('li', {}, `${label}: ${format} ${width}×${height}, ${bytes} bytes, sha256 `,
    h('span', { class: 'mono' }, String(sha256).slice(0, 16) + '…'))
}

function taskView (root, signal, id) {
  const heading = h('h2', { tabindex: -1 }, 'Task ', h('span', { class: 'mono' }, id))
  const fields = h('dl', { class: 'fields', id: 'task-fields' })
  const images = h('ul', { id: 'task-images' })
  const timeline = h('ol', { class: 'timeline', id: 'timeline', 'aria-label': 'Event timeline' })
  const player = h('div', { id: 'player' }, h('p', {}, 'The video shows here once the task has succeeded.'))
  const problem = h('div')
  root.replaceChildren(heading, problem, h('div', { class: 'cols' },
    h('section', { 'aria-labelledby': 'h-task' }, h('h3', { id: 'h-task' }, 'Task'), fields,
      h('h3', {}, 'Images'), images, h('h3', {}, 'Video'), player),
    h('section', { 'aria-labelledby': 'h-events' }, h('h3', { id: 'h-events' }, 'Events (live)'), timeline)))

  const render = (t) => {
    fields.replaceChildren(
      ...field('Status', badge(t.status)),
      ...field('Kind', t.kind),
      ...field('Created', when(t.created_at)),
      ...field('Updated', when(t.updated_at)),
      ...field('Reference', t.reference ?? '—'),
      ...field('Upstream task', h('span', { class: 'mono' }, t.upstream?.task_id ?? '—')),
      ...field('Upstream status', t.upstream === null
        ? '—'
        : `${t.upstream.status}${t.upstream.status_msg ? ` (${t.upstream.status_msg})` : ''}`),
      ...field('Error', t.error ? h('span', { class: 'error' }, `${t.error.code}: ${t.error.message}`) : '—'),
      ...field('Attention', t.attention === null
        ? '—'
        : `${t.attention.code} since ${when(t.attention.since)}: ${t.attention.message}`),
      ...field('Prompt', t.request?.prompt ?? '—'),
      ...field('Metadata', h('code', {}, JSON.stringify(t.metadata))))
    const r = t.request ?? {}
    images.replaceChildren(...[
      ...(r.image_list ?? []).map((item, i) => imageItem(`image_list[${i}]`, item.image)),
      imageItem('image', r.image), imageItem('image_tail', r.image_tail)
    ].filter(Boolean))
    if (images.childElementCount === 0) images.append(h('li', {}, 'none (text2video)'))
  }

  let video = null
  const showVideo = async (t) => {
    if (video !== null || t.status !== 'succeeded' || !(t.result?.videos?.length > 0)) return
    video = 'loading'
    player.replaceChildren(h('p', {}, 'Loading the video…'))
    // The copy may still be under way (409 CONTENT_NOT_READY, Retry-After): ask again, a bounded number of times.
    for (let attempt = 0; attempt < 60 && !signal.aborted; attempt++) {
      try {
        const data = await blob(`/v1/videos/${encodeURIComponent(t.id)}/content`, signal)
        const url = URL.createObjectURL(data)
        signal.addEventListener('abort', () => URL.revokeObjectURL(url))
        video = h('video', { id: 'video', controls: true, src: url, 'aria-label': `Video of task ${t.id}` })
        player.replaceChildren(video, h('p', {}, `${data.size} bytes, ${data.type || 'video'}; `,
          h('a', { href: url, download: `${t.id}.mp4` }, 'download')))
        return
      } catch (err) {
        if (!(err instanceof ApiError && err.code === 'CONTENT_NOT_READY')) {
          video = null
          return report(err, player)
        }
        await new Promise(resolve => setTimeout(resolve, 1000 * Math.min(err.retryAfter ?? 1, 2)))
      }
    }
  }

  const follow = async () => {
    let last = null
    // Reconnects after a cut stream (a replica shutting down), resuming after the last event seen; the gateway
    // ends the stream after the task's last event, and then a reconnect answers 204: done.
    for (let attempt = 0; attempt < 20 && !signal.aborted; attempt++) {
      let got = 0
      try {
        for await (const e of events(id, { lastEventId: last, signal })) {
          got++
          last = e.id
          timeline.append(h('li', { 'data-type': e.type },
            h('strong', {}, e.type), ` #${e.sequence} · ${when(e.timestamp)}`))
          render(e.data)
          announce(`Task ${id}: ${e.type}`)
          showVideo(e.data)
        }
        if (got === 0) return
      } catch (err) {
        if (signal.aborted) return
        if (!(err instanceof ApiError) || err.status === 0) { /* a cut: reconnect */ } else throw err
      }
      await new Promise(resolve => setTimeout(resolve, 2000))
    }
  }

  api(`/v1/videos/${encodeURIComponent(id)}`, { signal })
    .then((t) => { render(t); showVideo(t); return follow() })
    .catch(err => report(err, problem))
}

// ---- Deliveries ---------------------------------------------------------------------------------------------

function deliveriesView (root, signal, query) {
  // The four delivery states (docs/API.md, "GET /v1/deliveries"); each is its own filter on the server.
  const states = ['pending', 'retrying', 'failed', 'succeeded']
  const chosen = states.includes(query.get('status')) ? query.get('status') : ''
  const statusSelect = h('select', { id: 'f-dstatus' },
    h('option', { value: '' }, 'any'), ...states.map(st => h('option', { value: st }, st)))
  statusSelect.value = chosen
  statusSelect.addEventListener('change', () => {
    window.location.hash = statusSelect.value === '' ? '#/deliveries' : `#/deliveries?status=${statusSelect.value}`
  })
  const body = h('tbody')
  const problem = h('div')
  root.replaceChildren(h('h2', { tabindex: -1 }, 'Deliveries'),
    h('div', { class: 'toolbar' },
      h('div', {}, h('label', { for: 'f-dstatus' }, 'Delivery status'), ' ', statusSelect)),
    problem,
    h('table', { id: 'deliveries' },
      h('thead', {}, h('tr', {}, ['Created', 'Event', 'Task', 'Target', 'Status', 'Attempts', 'Last attempt',
        'Next attempt', '']
        .map(t => h('th', { scope: 'col' }, t)))), body))

  const load = async () => {
    const q = new URLSearchParams({ limit: '50' })
    if (chosen !== '') q.set('status', chosen)
    const { data } = await api(`/v1/deliveries?${q}`, { signal })
    if (signal.aborted) return
    body.replaceChildren(...data.map(d => {
      const lastAttempt = d.attempts.at(-1)
      const label = `Retry delivery ${d.id}`
      const retry = h('button',
        // A delivery still on its way (pending, retrying) cannot be retried by hand: the server answers 409.
        { type: 'button', disabled: ['pending', 'retrying'].includes(d.status), 'aria-label': label },
        'Retry')
      retry.addEventListener('click', async () => {
        retry.disabled = true
        try {
          await api(`/v1/deliveries/${encodeURIComponent(d.id)}/retry`, { method: 'POST', signal })
          announce(`Delivery ${d.id} queued again`)
          await load()
        } catch (err) { report(err, problem) }
      })
      return h('tr', { 'data-id': d.id },
        h('td', {}, when(d.created_at)),
        h('td', {}, `${d.type} #${d.sequence}`),
        h('td', { class: 'mono' }, h('a', { href: `#/tasks/${encodeURIComponent(d.task_id)}` }, d.task_id)),
        h('td', { class: 'mono' }, d.endpoint_id ?? 'webhook_url', h('br'), d.url),
        h('td', {}, badge(d.status)),
        h('td', { class: 'attempts' }, String(d.attempts.length)),
        h('td', {}, lastAttempt
          ? `${when(lastAttempt.at)}: ${lastAttempt.status_code ?? lastAttempt.error} (${lastAttempt.duration_ms} ms)`
          : '—'),
        h('td', { class: 'next' }, d.next_attempt_at ? when(d.next_attempt_at) : '—'),
        h('td', {}, retry))
    }))
    if (data.length === 0) body.append(h('tr', {}, h('td', { colspan: 9 }, 'No deliveries.')))
    problem.replaceChildren()
  }
  poll(signal, () => load().catch(err => { report(err, problem); throw err }))
}

// ---- Endpoints ----------------------------------------------------------------------------------------------

function endpointsView (root, signal) {
  const list = h('div', { class: 'cards', id: 'endpoints' })
  const problem = h('div')
  root.replaceChildren(h('h2', { tabindex: -1 }, 'Webhook endpoints'), problem, list)
  const dayAgo = new Date(Date.now() - 24 * 3600_000 - new Date().getTimezoneOffset() * 60_000)
    .toISOString().slice(0, 16)

  const load = async () => {
    const { data } = await api('/v1/webhook-endpoints', { signal })
    // Health: enabled or why not, and how many of its recent deliveries failed (the first 20 endpoints only).
    const failed = await Promise.all(data.slice(0, 20).map(ep =>
      api(`/v1/deliveries?endpoint=${encodeURIComponent(ep.id)}&status=failed&limit=100`, { signal })
        .then(r => r.data.length, () => null)))
    if (signal.aborted) return
    list.replaceChildren(...data.map((ep, i) => {
      const since = h('input', { id: `since-${ep.id}`, type: 'datetime-local', value: dayAgo })
      const recover = h('button', { type: 'button' }, 'Recover failed deliveries')
      recover.addEventListener('click', async () => {
        try {
          const r = await api(`/v1/webhook-endpoints/${encodeURIComponent(ep.id)}/recover`,
            { method: 'POST', body: { since: new Date(since.value).toISOString() }, signal })
          announce(`Endpoint ${ep.id}: ${r.recovered} deliveries queued again`)
        } catch (err) { report(err, problem) }
      })
      let health = h('span', { class: 's-ok' }, 'enabled, healthy')
      if (!ep.enabled) health = h('span', { class: 's-bad' }, `disabled: ${ep.disabled_reason ?? 'unknown'}`)
      else if (failed[i]) health = h('span', { class: 's-warn' }, `enabled, ${failed[i]} failed deliveries`)
      return h('article', { class: 'card', 'data-id': ep.id, 'aria-label': `Endpoint ${ep.url}` },
        h('p', { class: 'mono' }, ep.url), h('dl', { class: 'fields' },
          ...field('Id', h('span', { class: 'mono' }, ep.id)),
          ...field('Health', health),
          ...field('Events', ep.event_types?.join(', ') ?? 'all'),
          ...field('Description', ep.description ?? '—'),
          ...field('Created', when(ep.created_at))),
        h('label', { for: `since-${ep.id}` }, 'Recover failures since'), since, ' ', recover)
    }))
    if (data.length === 0) list.append(h('p', {}, 'No webhook endpoints.'))
    problem.replaceChildren()
  }
  poll(signal, () => load().catch(err => { report(err, problem); throw err }))
}

// ---- Usage and system ---------------------------------------------------------------------------------------

/** `kg_queue_jobs{queue,state}` out of the Prometheus text of /metrics. */
function queueDepths (text) {
  const depths = {}
  for (const m of text.matchAll(/^kg_queue_jobs\{([^}]*)\} (\S+)$/gm)) {
    const labels = Object.fromEntries([...m[1].matchAll(/(\w+)="([^"]*)"/g)].map(l => [l[1], l[2]]))
    depths[labels.queue] ??= {}
    depths[labels.queue][labels.state] = Number(m[2])
  }
  return depths
}

function usageView (root, signal) {
  const upstream = h('div', { id: 'upstream' })
  const queues = h('div', { id: 'queues' })
  const usage = h('tbody')
  const problem = h('div')
  root.replaceChildren(h('h2', { tabindex: -1 }, 'Usage and system'), problem,
    h('h3', {}, 'Upstream account'), upstream,
    h('h3', {}, 'Queues'), queues,
    h('h3', {}, 'Per-caller usage (today, UTC)'),
    h('table', { id: 'usage' }, h('thead', {}, h('tr', {},
      ['Caller', 'Tasks', 'Units', 'Active', 'Endpoints', 'Limits'].map(t => h('th', { scope: 'col' }, t)))), usage))

  const load = async () => {
    const [rows, ready, metrics] = await Promise.all([
      api('/v1/usage', { signal }), plain('/health/ready', signal), plain('/metrics', signal).catch(() => null)])
    if (signal.aborted) return
    usage.replaceChildren(...rows.data.map(u => h('tr', {},
      h('td', {}, u.caller), h('td', {}, String(u.tasks)), h('td', {}, String(u.units)),
      h('td', {}, String(u.active_tasks)), h('td', {}, String(u.webhook_endpoints)),
      h('td', { class: 'mono' }, Object.entries(u.limits).map(([k, v]) => `${k}=${v === 0 ? '∞' : v}`).join(' ')))))
    let state = null
    try { state = JSON.parse(ready.text) } catch { /* not JSON: shown as unknown */ }
    const paused = state?.upstream
    upstream.replaceChildren(paused
      ? h('p', { class: 's-bad' }, `Paused since ${when(paused.since)}: ${paused.reason} (${paused.code}). ` +
        'Queued tasks wait; it resumes by itself.')
      : h('p', { class: state?.status === 'ok' ? 's-ok' : 's-bad' },
        state?.status === 'ok' ? 'Sending: not paused.' : `Gateway not ready: ${state?.status ?? ready.status}`))
    const depths = metrics === null || metrics.status !== 200 ? {} : queueDepths(metrics.text)
    const states = [...new Set(Object.values(depths).flatMap(Object.keys))].sort()
    queues.replaceChildren(Object.keys(depths).length === 0
      ? h('p', {}, '/metrics is not reachable from here.')
      : h('table', {}, h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Queue'),
        states.map(s => h('th', { scope: 'col' }, s)))),
      h('tbody', {}, Object.entries(depths).map(([queue, by]) => h('tr', {},
        h('th', { scope: 'row' }, queue), states.map(s => h('td', {}, String(by[s] ?? 0))))))))
    problem.replaceChildren()
  }
  poll(signal, () => load().catch(err => { report(err, problem); throw err }))
}

// ---- Routing ------------------------------------------------------------------------------------------------

let current = null

function route () {
  current?.abort()
  if (key.get() === null) return showLogin()
  current = new AbortController()
  const { parts, query } = parseHash()
  const root = $('view')
  const [section = 'tasks', id] = parts
  for (const a of document.querySelectorAll('nav a')) {
    if (a.getAttribute('href') === `#/${section}`) a.setAttribute('aria-current', 'page')
    else a.removeAttribute('aria-current')
  }
  if (section === 'tasks' && id !== undefined) taskView(root, current.signal, id)
  else if (section === 'deliveries') deliveriesView(root, current.signal, query)
  else if (section === 'endpoints') endpointsView(root, current.signal)
  else if (section === 'usage') usageView(root, current.signal)
  else tasksView(root, current.signal, query)
  // Focus follows the navigation, so keyboard and screen-reader users land on the new view's heading.
  root.querySelector('h2')?.focus()
}

async function start () {
  $('login').hidden = true
  $('nav').hidden = false
  $('signout').hidden = false
  try {
    await signIn()
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return showLogin('The key was not accepted.')
    return report(err, $('view'))
  }
  route()
}

$('login').addEventListener('submit', (e) => {
  e.preventDefault()
  key.set($('key').value.trim())
  $('key').value = ''
  start()
})
$('signout').addEventListener('click', () => { current?.abort(); showLogin() })
window.addEventListener('hashchange', () => { if (key.get() !== null) route() })
if (key.get() === null) showLogin()
else start()
