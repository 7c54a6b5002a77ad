import type { FastifyInstance } from 'fastify'
import health from './health.ts'
import videos from './videos.ts'
import callbacks from './callbacks.ts'
import events from './events.ts'
import webhooks from './webhooks.ts'
import content from './content.ts'
import orphans from './orphans.ts'
import usage from './usage.ts'
import dashboard from './dashboard.ts'
import links from './links.ts'
import root from './root.ts'

/** Every route module, registered explicitly: easier to read and grep than autoload. */
export default async function routes (app: FastifyInstance) {
  await app.register(health, { prefix: '/health' })
  await app.register(videos, { prefix: '/v1/videos' })
  await app.register(events, { prefix: '/v1/videos', heartbeatMs: app.deps.config.sseHeartbeatMs })
  await app.register(content, { prefix: '/v1/videos' })
  await app.register(links, { prefix: '/v1/videos' })
  await app.register(callbacks, { prefix: '/callbacks' })
  await app.register(webhooks, { prefix: '/v1' })
  await app.register(orphans, { prefix: '/v1' })
  await app.register(usage, { prefix: '/v1' })
  await app.register(dashboard)
  await app.register(root)
}
