/**
 * Makes the adapter UPSTREAM names (src/config). The simulator is development and test code: it is imported here
 * only when chosen, so a production process (cometapi or kling) never loads it.
 */
import type { Config } from '../config/index.ts'
import type { UpstreamAdapter } from './adapter.ts'
import { CometApiAdapter } from './cometapi.ts'
import { KlingAdapter } from './kling.ts'

export interface UpstreamOptions {
  /** Unix ms that the kling adapter signs its tokens by (tests move it). */
  clock?: () => number
}

export async function createUpstream (config: Config, opts: UpstreamOptions = {}): Promise<UpstreamAdapter> {
  const { name, timeoutMs } = config.upstream
  switch (name) {
    case 'cometapi': {
      const { baseUrl, key } = config.upstream.cometapi
      return new CometApiAdapter({ baseUrl, apiKey: key ?? '', timeoutMs })
    }
    case 'kling': {
      const { baseUrl, accessKey, secretKey } = config.upstream.kling
      // loadConfig has made sure both keys are there for UPSTREAM=kling; the adapter checks them again.
      const keys = { accessKey: accessKey ?? '', secretKey: secretKey ?? '' }
      return new KlingAdapter({ baseUrl, ...keys, timeoutMs, clock: opts.clock })
    }
    case 'simulator': {
      const { startSimulatorAdapter } = await import('./simulator.ts')
      return await startSimulatorAdapter({ timeoutMs, ...config.upstream.simulator })
    }
  }
}
