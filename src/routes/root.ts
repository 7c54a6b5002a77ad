import type { FastifyInstance } from 'fastify'

/**
 * `/` sends a browser somewhere useful: the dashboard when this build has one, else the API docs. Decided at ready,
 * when every route is registered (the dashboard is its own plugin). Not part of the contract (untagged).
 */
export default async function root (app: FastifyInstance) {
  let target = '/docs'
  app.addHook('onReady', async () => {
    if (app.hasRoute({ method: 'GET', url: '/dashboard' })) target = '/dashboard'
  })
  app.get('/', { logLevel: 'warn' }, async (_request, reply) => await reply.redirect(target, 302))
}
