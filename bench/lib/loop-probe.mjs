/**
 * Preloaded into a benchmarked server (`node --import ./bench/lib/loop-probe.mjs`): the event-loop delay
 * histogram of that process (perf_hooks, 1 ms resolution) on a side port, LOOP_PROBE_PORT. GET /reset clears it,
 * GET / reads it: `max_ms` is the longest the loop was blocked since the reset. Plain JavaScript: it is loaded
 * before tsx.
 */
import http from 'node:http'
import { monitorEventLoopDelay } from 'node:perf_hooks'

const histogram = monitorEventLoopDelay({ resolution: 1 })
histogram.enable()
const server = http.createServer((request, response) => {
  if (request.url === '/reset') histogram.reset()
  const ms = (ns) => Number.isFinite(ns) ? ns / 1e6 : null
  response.setHeader('content-type', 'application/json')
  response.end(JSON.stringify({ max_ms: ms(histogram.max), p99_ms: ms(histogram.percentile(99)), count: histogram.count }))
})
server.listen(Number(process.env.LOOP_PROBE_PORT), '127.0.0.1')
// The probe never keeps a server alive that is shutting down.
server.unref()
