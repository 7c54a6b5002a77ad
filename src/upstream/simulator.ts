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

export async function startSimulatorAdapter (opts: { timeoutMs: number }): Promise<SimulatorAdapter> {
  const sim = new Simulator()
  const baseUrl = await sim.listen()
  return new SimulatorAdapter(sim, { baseUrl, timeoutMs: opts.timeoutMs })
}
