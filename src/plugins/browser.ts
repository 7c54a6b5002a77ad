import fp from 'fastify-plugin'
import cors from '@fastify/cors'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { Unauthorized } from '../domain/errors.ts'
import { verifyLink, type LinkTarget } from '../services/links.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** `app.authenticate`, or without an Authorization header a signed link (`?sig=`) for `target`. */
    authenticateOrLink: (target: LinkTarget) => (request: FastifyRequest) => Promise<void>
  }
}

/**
 * What a browser needs (docs/API.md, "Browsers"): CORS for the origins in CORS_ORIGINS (none = no CORS headers, the
 * default), and signed links in place of the Authorization header on the two routes a `<video>` or an EventSource
 * opens. Bearer keys only, never cookies, so CORS never allows credentials.
 */
export default fp(async function browser (app: FastifyInstance) {
  const { config, clock } = app.deps
  if (config.corsOrigins.length > 0) {
    await app.register(cors, {
      origin: config.corsOrigins.includes('*') ? '*' : config.corsOrigins,
      methods: ['GET', 'HEAD', 'POST', 'DELETE'],
      allowedHeaders: ['authorization', 'content-type', 'idempotency-key', 'last-event-id', 'range'],
      // What a script must read: back-off, where a task lives, replays, and the byte ranges of a video.
      exposedHeaders: ['retry-after', 'location', 'idempotent-replayed', 'content-range', 'accept-ranges',
        'content-length', 'www-authenticate'],
      credentials: false,
      maxAge: 600
    })
  }
  app.decorate('authenticateOrLink', (target: LinkTarget) => async (request: FastifyRequest) => {
    const sig = (request.query as { sig?: unknown }).sig
    // A key, when one is sent, decides alone: a bad key is 401 whatever link is beside it.
    if (request.headers.authorization !== undefined || sig === undefined) return await app.authenticate(request)
    if (typeof sig !== 'string') throw new Unauthorized()
    request.caller = verifyLink(config, sig, target, (request.params as { id: string }).id, clock())
  })
}, { name: 'browser', dependencies: ['auth'] })
