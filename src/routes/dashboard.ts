import type { FastifyInstance } from 'fastify'
import fastifyStatic from '@fastify/static'
import { fileURLToPath } from 'node:url'

/** `dashboard/` at the repo root; the same relative place from src/plugins and from dist/src/plugins. */
export const DASHBOARD_DIR = fileURLToPath(new URL('../../dashboard/', import.meta.url))

/**
 * The page's only sources are its own files and the gateway's API on the same origin; the video plays from a Blob
 * the page fetched with the key. No inline script, no third party, no framing, so a key typed into it stays here.
 */
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src blob:; " +
  "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/**
 * The dashboard's static shell (docs/API.md, `GET /dashboard`): plain HTML, CSS and ES modules, no build step.
 * The shell needs no key; the page asks for one and calls `/v1` with it, so it sees what that key sees. A plain
 * (encapsulated) plugin, so its hooks touch only these routes; untagged, so the OpenAPI document leaves it out.
 * The router ignores trailing slashes, so `/dashboard` is the page too: the page names its files by absolute path.
 */
export default async function dashboard (app: FastifyInstance) {
  app.addHook('onSend', async (_request, reply, payload) => {
    reply.header('content-security-policy', CSP)
    reply.header('x-content-type-options', 'nosniff')
    reply.header('referrer-policy', 'no-referrer')
    // The shell is tiny and changes with each release; revalidating costs one 304.
    reply.header('cache-control', 'no-cache')
    return payload
  })
  await app.register(fastifyStatic, {
    root: DASHBOARD_DIR,
    prefix: '/dashboard/',
    index: 'index.html',
    // Only the files that are there at start: no directory walk per request, and nothing else is reachable.
    wildcard: false,
    decorateReply: false,
    serveDotFiles: false
  })
}
