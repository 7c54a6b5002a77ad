import Fastify, { type FastifyBaseLogger, type FastifyInstance, type RawServerDefault } from 'fastify'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { Logger } from 'pino'
import { randomUUID } from 'node:crypto'
import type { Config } from './config/index.ts'
import type { RedisClient } from './infra/redis.ts'
import errors from './plugins/errors.ts'
import docs from './plugins/swagger.ts'
import routes from './routes/index.ts'

/** Everything the app needs from outside; whoever creates a client closes it (aesthetics §8.3). */
export interface AppDeps {
  config: Config
  /** Request-path Redis connection (fails fast). */
  redis: RedisClient
  logger: Logger
  clock: () => number
  ids: () => string
}

declare module 'fastify' {
  interface FastifyInstance { deps: AppDeps }
}

/** The app with the TypeBox type provider, as buildApp returns it. */
export type App = FastifyInstance<RawServerDefault, IncomingMessage, ServerResponse, FastifyBaseLogger, TypeBoxTypeProvider>

export const SMALL_BODY_LIMIT = 1024 * 1024

/** Builds the un-listened app. server.ts listens; tests inject or listen on port 0. */
export async function buildApp (input: Omit<AppDeps, 'clock' | 'ids'> & Partial<AppDeps>): Promise<App> {
  const deps: AppDeps = { clock: Date.now, ids: randomUUID, ...input }
  const app = Fastify({
    loggerInstance: deps.logger as FastifyBaseLogger,
    bodyLimit: SMALL_BODY_LIMIT,
    requestTimeout: 120_000,
    return503OnClosing: true,
    genReqId: () => deps.ids(),
    // allErrors lists every bad field; it is safe only because every string and array in our schemas is bounded
    // (a test walks the OpenAPI document to keep it so).
    ajv: { customOptions: { allErrors: true, removeAdditional: false, coerceTypes: 'array' } }
  }).withTypeProvider<TypeBoxTypeProvider>()

  app.decorate('deps', deps)
  await app.register(errors)
  await app.register(docs)
  await app.register(routes)
  return app
}
