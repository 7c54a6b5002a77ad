/**
 * Development only: the built-in simulator (simulator/app.ts) in this process, spoken to over loopback HTTP as
 * CometAPI. factory.ts imports this module only when UPSTREAM=simulator, so the simulator is never loaded by a
 * production process. The adapter owns the simulator: closing it stops both.
 */
import { Simulator } from '../../simulator/app.ts'
import { CometApiAdapter } from './cometapi.ts'
import type { UpstreamName } from '../config/index.ts'

export class SimulatorAdapter extends CometApiAdapter {
  override readonly name: UpstreamName = 'simulator'

  constructor (private readonly sim: Simulator, opts: { baseUrl: string, timeoutMs: number }) {
    // The simulator takes any Bearer key on its CometAPI routes.
    super({ ...opts, apiKey: 'simulator' })
  }

  override async close (): Promise<void> {
    await super.close()
    await this.sim.close()
  }
}

/** The port the in-process simulator tries with SIMULATOR_PORT unset: the standalone one's, as README's curls use. */
export const SIMULATOR_DEFAULT_PORT = 4010

export interface SimulatorAdapterOptions {
  timeoutMs: number
  /** SIMULATOR_PORT; unset: 4010, or a free port when 4010 is taken (a second gateway, a standalone simulator). */
  port?: number
  processingAfterMs?: number
  finishAfterMs?: number
  failRatio?: number
}

export async function startSimulatorAdapter (opts: SimulatorAdapterOptions): Promise<SimulatorAdapter> {
  const { timeoutMs, port, ...pace } = opts
  // The in-process simulator is the development upstream: loopback only, so its control API is too.
  const start = async (at: number) => {
    const sim = new Simulator(pace)
    try {
      return { sim, baseUrl: await sim.listen(at, '127.0.0.1') }
    } catch (err) {
      await sim.close().catch(() => {})
      throw err
    }
  }
  let started: { sim: Simulator, baseUrl: string }
  try {
    started = await start(port ?? SIMULATOR_DEFAULT_PORT)
  } catch (err) {
    // Only the default gives way; a port someone chose and cannot have is an error they should see.
    if (port !== undefined || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err
    started = await start(0)
  }
  return new SimulatorAdapter(started.sim, { baseUrl: started.baseUrl, timeoutMs })
}
