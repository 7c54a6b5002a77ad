/** Runs the simulator on its own: `npm run simulator -- [port=4010] [host=127.0.0.1]`. */
import { Simulator } from './app.ts'

const port = Number(process.argv[2] ?? 4010)
const host = process.argv[3] ?? '127.0.0.1'
const sim = new Simulator({ logger: true })
const url = await sim.listen(port, host)
console.log(`CometAPI simulator on ${url} (control API under ${url}/_sim)`)
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => { sim.close().catch(console.error) })
