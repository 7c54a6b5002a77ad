/**
 * The dashboard (docs/API.md, `GET /dashboard`) in a real browser: Debian's chromium driven by playwright-core
 * (never a downloaded browser) against the real app on loopback and the simulator. Tasks, endpoints and deliveries
 * are made through the API; the test checks that the pages show them, follow a task live over SSE, load its video
 * and retry a delivery with one click. Screenshots go to test/artifacts/ (gitignored).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { existsSync, mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { chromium, type Browser, type BrowserServer, type Page } from 'playwright-core'
import { auth, KEYS, startHarness, type Harness } from './helpers/harness.ts'
import { createTask, waitFor } from './helpers/tasks.ts'
import { Receiver } from './helpers/receiver.ts'

const CHROMIUM = '/usr/bin/chromium'
const ARTIFACTS = fileURLToPath(new URL('./artifacts/', import.meta.url))

let h: Harness
let receiver: Receiver
let server: BrowserServer
let browser: Browser
let base: string

/** A fresh tab (its own sessionStorage), signed in with `who`'s key. */
async function signedIn (who: 'alice' | 'bob' | 'ops'): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } })
  const page = await context.newPage()
  await page.goto(`${base}/dashboard`)
  await page.getByLabel('API key').fill(KEYS[who])
  await page.getByRole('button', { name: 'Open the dashboard' }).click()
  await page.locator('#who').filter({ hasText: /caller|admin/ }).waitFor()
  expect(await page.locator('#login').isVisible()).toBe(false)
  return page
}

const shot = async (page: Page, name: string) => {
  await page.screenshot({ path: `${ARTIFACTS}${name}.png`, fullPage: true })
}

const taskIds = async (page: Page) => await page.locator('#tasks tbody tr[data-id]').evaluateAll(
  rows => rows.map(r => r.getAttribute('data-id')))

describe.skipIf(!existsSync(CHROMIUM))('the dashboard, in chromium', () => {
  beforeAll(async () => {
    mkdirSync(ARTIFACTS, { recursive: true })
    receiver = await Receiver.start()
    // Upstream moves only when the test says so (sim.setStatus sends the callback), so "live" is observable.
    h = await startHarness({
      listen: true,
      sim: { auto: false },
      env: { WEBHOOK_RETRY_SCHEDULE: '0,20ms', WEBHOOK_TIMEOUT_MS: '500', RECONCILE_INTERVAL_MS: '600000' }
    })
    base = h.config.publicBaseUrl ?? ''
    expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    // Its own process, so afterAll can make sure it is gone (launchServer hands out the child process).
    server = await chromium.launchServer({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] })
    browser = await chromium.connect(server.wsEndpoint())
  }, 30_000)

  afterAll(async () => {
    const pid = server?.process().pid
    await browser?.close().catch(() => {})
    await server?.close().catch(() => {})
    if (pid !== undefined) {
      try { process.kill(pid, 'SIGKILL') } catch { /* already gone, as it should be */ }
    }
    await receiver?.close()
    await h?.close()
  }, 90_000)

  it('serves the shell without a key, with a strict CSP, and asks for the key', async () => {
    const res = await fetch(`${base}/dashboard`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/text\/html/)
    expect(res.headers.get('content-security-policy')).toContain("script-src 'self'")
    expect(await res.text()).toContain('<label for="key">API key</label>')
    const script = await fetch(`${base}/dashboard/app.js`)
    expect(script.headers.get('content-type')).toMatch(/javascript/)
    expect(await script.text()).toContain("from './api.js'")
    const missing = await fetch(`${base}/dashboard/nope.js`)
    expect(missing.status).toBe(404)
    expect(missing.headers.get('content-type')).toMatch(/problem\+json/)
    expect((await missing.json()).code).toBe('NOT_FOUND')

    const context = await browser.newContext()
    const page = await context.newPage()
    await page.goto(`${base}/dashboard/`)
    await page.getByLabel('API key').fill('not-a-key-0123456789')
    await page.getByRole('button', { name: 'Open the dashboard' }).click()
    await expect.poll(async () => await page.locator('#login-error').textContent()).toMatch(/not accepted/)
    await context.close()
  })

  it('lists tasks live, filters by status, and a caller sees only its own', async () => {
    const page = await signedIn('alice')
    expect(await page.locator('#who').textContent()).toBe('caller alice')
    const first = await createTask(h, { reference: 'order-1' })
    await expect.poll(() => taskIds(page), { timeout: 8000 }).toContain(first.id)

    // Created while the page is open: the poll shows it without a reload.
    await page.evaluate(() => { (window as unknown as { marker: number }).marker = 1 })
    const second = await createTask(h, { reference: 'order-2', metadata: { shop: 'berlin' } })
    const bobs = await createTask(h, { reference: 'bob-1' }, 'bob')
    await expect.poll(() => taskIds(page), { timeout: 8000 }).toContain(second.id)
    expect(await page.evaluate(() => (window as unknown as { marker?: number }).marker)).toBe(1)
    expect(await taskIds(page)).not.toContain(bobs.id)

    // One task fails upstream; the status filter shows it alone.
    const upstreamId = (await waitFor(h, second.id, t => t.upstream !== null)).upstream?.task_id as string
    h.sim.setStatus(upstreamId, 'failed', 'content policy')
    await waitFor(h, second.id, t => t.status === 'failed')
    await page.getByLabel('Status').selectOption('failed')
    await page.getByRole('button', { name: 'Apply' }).click()
    await expect.poll(() => taskIds(page), { timeout: 8000 }).toEqual([second.id])
    await expect.poll(() => page.locator(`tr[data-id="${second.id}"]`).textContent()).toContain('UPSTREAM_FAILED')
    await page.getByLabel('Search (id, reference, metadata)').fill('nothing-like-it')
    await page.getByRole('button', { name: 'Apply' }).click()
    await expect.poll(() => taskIds(page)).toEqual([])
    await page.getByLabel('Search (id, reference, metadata)').fill('berlin')
    await page.getByRole('button', { name: 'Apply' }).click()
    await expect.poll(() => taskIds(page)).toEqual([second.id])
    await page.context().close()

    // An admin key sees every caller's, and may narrow to one.
    const admin = await signedIn('ops')
    expect(await admin.locator('#who').textContent()).toMatch(/admin/)
    await expect.poll(() => taskIds(admin), { timeout: 8000 }).toEqual(expect.arrayContaining([first.id, bobs.id]))
    await admin.getByLabel('Caller').fill('bob')
    await admin.getByRole('button', { name: 'Apply' }).click()
    await expect.poll(() => taskIds(admin), { timeout: 8000 }).toEqual([bobs.id])
    await admin.getByLabel('Caller').fill('')
    await admin.getByLabel('Status').selectOption('')
    await admin.getByRole('button', { name: 'Apply' }).click()
    await expect.poll(() => taskIds(admin)).toEqual(expect.arrayContaining([first.id, second.id, bobs.id]))
    await shot(admin, 'tasks')
    await admin.context().close()
  }, 40_000)

  it('follows a task live to succeeded over SSE and loads its video into the player', async () => {
    const task = await createTask(h, { reference: 'live-1' })
    const submitted = await waitFor(h, task.id, t => t.upstream !== null)
    const page = await signedIn('alice')
    await page.goto(`${base}/dashboard/#/tasks/${task.id}`)
    const types = async () =>
      await page.locator('#timeline li').evaluateAll(l => l.map(e => e.getAttribute('data-type')))
    await expect.poll(types, { timeout: 8000 }).toEqual(['video.queued', 'video.submitted'])
    await expect.poll(() => page.locator('#task-fields').textContent()).toContain(submitted.upstream?.task_id)
    expect(await page.locator('#task-images li').count()).toBe(2)

    const upstreamId = submitted.upstream?.task_id as string
    h.sim.setStatus(upstreamId, 'processing')
    await expect.poll(types, { timeout: 8000 }).toContain('video.processing')
    h.sim.setStatus(upstreamId, 'succeed')
    await expect.poll(types, { timeout: 10_000 }).toEqual(
      ['video.queued', 'video.submitted', 'video.processing', 'video.succeeded', 'video.stored'])
    expect(await page.locator('#live').textContent()).toMatch(/video\.(succeeded|stored)/)

    // The video came with the key, as a Blob: its bytes are the gateway's copy.
    const video = page.locator('#video')
    await video.waitFor({ timeout: 10_000 })
    const src = await video.getAttribute('src')
    expect(src).toMatch(/^blob:/)
    const content = await fetch(`${base}/v1/videos/${task.id}/content`, { headers: auth('alice') })
    const size = (await content.arrayBuffer()).byteLength
    expect(await page.locator('#player').textContent()).toContain(`${size} bytes`)
    // The simulator serves a real H.264 MP4 (simulator/assets/sample.mp4): it must decode and play in the page.
    const playable = await video.evaluate(async (v: HTMLVideoElement) => {
      v.muted = true
      await v.play().catch(() => {})
      for (let i = 0; i < 50 && (v.readyState < 2 || v.currentTime === 0) && v.error === null; i++) {
        await new Promise(resolve => setTimeout(resolve, 100))
      }
      return { readyState: v.readyState, currentTime: v.currentTime, error: v.error?.code ?? null }
    })
    expect(playable.error).toBeNull()
    expect(playable.readyState).toBeGreaterThanOrEqual(2)
    expect(playable.currentTime).toBeGreaterThan(0)
    await shot(page, 'task')
    await page.context().close()
  }, 40_000)

  it('retries a failed delivery with one click, and shows endpoint health and usage', async () => {
    receiver.answerAlways({ status: 500 })
    const ep = await fetch(`${base}/v1/webhook-endpoints`, {
      method: 'POST',
      headers: { ...auth('alice'), 'content-type': 'application/json' },
      body: JSON.stringify({ url: receiver.url('/hook'), event_types: ['video.queued'], description: 'billing' })
    })
    expect(ep.status).toBe(201)
    const endpoint = await ep.json() as { id: string }
    await createTask(h, { reference: 'hooked-1' })
    await receiver.waitFor(2)

    const page = await signedIn('alice')
    await page.goto(`${base}/dashboard/#/deliveries?status=failed`)
    const row = page.locator('#deliveries tbody tr[data-id]')
    await expect.poll(() => row.count(), { timeout: 8000 }).toBe(1)
    await expect.poll(() => row.locator('.attempts').textContent()).toBe('2')
    expect(await row.textContent()).toContain('failed')

    receiver.answerAlways({ status: 200 })
    await page.getByLabel('Delivery status').selectOption('')
    await expect.poll(() => row.count()).toBe(1)
    await row.getByRole('button', { name: /^Retry delivery/ }).click()
    await expect.poll(() => row.locator('.attempts').textContent(), { timeout: 8000 }).toBe('3')
    await expect.poll(() => row.textContent(), { timeout: 8000 }).toContain('succeeded')
    expect(receiver.requests.length).toBe(3)
    await shot(page, 'deliveries')

    await page.getByRole('link', { name: 'Endpoints' }).click()
    const card = page.locator(`#endpoints [data-id="${endpoint.id}"]`)
    await expect.poll(() => card.textContent(), { timeout: 8000 }).toContain('enabled, healthy')
    await card.getByRole('button', { name: 'Recover failed deliveries' }).click()
    await expect.poll(() => page.locator('#live').textContent()).toMatch(/0 deliveries queued again/)

    await page.getByRole('link', { name: 'Usage' }).click()
    await expect.poll(() => page.locator('#usage tbody').textContent(), { timeout: 8000 }).toContain('alice')
    await expect.poll(() => page.locator('#upstream').textContent()).toContain('not paused')
    await expect.poll(() => page.locator('#queues').textContent()).toContain('submit')
    await shot(page, 'usage')
    // Every control is reachable by keyboard: Tab from the top lands on a link or button, never on nothing.
    await page.keyboard.press('Tab')
    expect(await page.evaluate(() => document.activeElement?.tagName)).toMatch(/^(A|BUTTON|INPUT)$/)
    await page.context().close()
  }, 40_000)
})
