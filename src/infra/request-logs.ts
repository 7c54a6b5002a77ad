import type { FastifyInstance } from 'fastify'

/**
 * Routes that log no line per request: probes and scrapes come every few seconds, and a page of the Swagger UI or
 * the dashboard pulls a dozen assets; logged, they bury the lines that matter. Their warnings and errors still log.
 */
export const QUIET_ROUTES: Array<(url: string) => boolean> = [
  url => url === '/docs' || url.startsWith('/docs/'),
  url => url.startsWith('/dashboard/'),
  url => url === '/favicon.ico',
  url => url.startsWith('/health/'),
  url => url === '/metrics'
]

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']

/** Sets `logLevel: 'warn'` on every quiet route registered after it (unless the logger is already quieter). */
export function quietRoutes (app: FastifyInstance, level: string): void {
  if (LEVELS.indexOf(level) >= LEVELS.indexOf('warn')) return
  app.addHook('onRoute', route => {
    if ((route.logLevel ?? '') === '' && QUIET_ROUTES.some(quiet => quiet(route.url))) route.logLevel = 'warn'
  })
}
