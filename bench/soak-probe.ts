import { appendFileSync } from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

/**
 * The soak's probe, preloaded into the proxy (`node --import results/.build/soak-probe.mjs dist/main.js`)
 * so that heap, handles and event-loop delay are read from inside the proxy process without adding
 * anything to the product. Every `SOAK_PROBE_INTERVAL_MS` (default 30000) it appends one JSON line to
 * the file `SOAK_PROBE_FILE`:
 *
 *   {"t":ms since the probe started,"rss":B,"heapUsed":B,"heapUsedMin":B,"heapLive":B,"heapTotal":B,
 *    "external":B,"arrayBuffers":B,"handles":N,"eldP50":ms,"eldP99":ms,"eldMax":ms}
 *
 * `heapUsed` is the reading at the end of the window; `heapUsedMin` the lowest of the once-a-second
 * readings in the window; `heapLive` the heap used right after a full GC the probe forces at the end
 * of each window (`--expose-gc` set from here, so the proxy's command line stays the product's):
 * what the objects still reachable take, which is what a leak raises, whenever V8 would have
 * collected on its own. That GC is a pause of a few ms to tens of ms once per window, in that
 * window's ELD max (not its p99). The other figures are read before it. `handles` is
 * `process.getActiveResourcesInfo().length` (sockets, timers, server handles…; the probe's own two
 * timers included). The event-loop delay histogram (10 ms resolution) is reset after each line, so
 * each line covers its own window; its figures are the delay beyond the 10 ms sampling interval. The timers are unref'd: the probe never keeps the proxy alive.
 * A write that fails is dropped (the soak then sees a missing sample, not a crashed proxy).
 */

const file = process.env.SOAK_PROBE_FILE
const intervalMs = Number(process.env.SOAK_PROBE_INTERVAL_MS ?? '30000')

if (file !== undefined && file !== '' && Number.isFinite(intervalMs) && intervalMs > 0) {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const started = performance.now()
  const delay = monitorEventLoopDelay({ resolution: 10 })
  delay.enable()
  let heapUsedMin = Number.POSITIVE_INFINITY
  const everySecond = setInterval(() => {
    heapUsedMin = Math.min(heapUsedMin, process.memoryUsage().heapUsed)
  }, 1000)
  everySecond.unref()
  // The histogram records the time between the sampling timer's turns, so an idle loop reads ~10 ms:
  // the delay is what is above the resolution.
  const ms = (ns: number) => Math.max(0, Math.round((ns - 10e6) / 1e4) / 100)
  const window = setInterval(() => {
    const memory = process.memoryUsage()
    const line = {
      t: Math.round(performance.now() - started),
      rss: memory.rss,
      heapUsed: memory.heapUsed,
      heapUsedMin: Math.min(heapUsedMin, memory.heapUsed),
      heapLive: 0,
      heapTotal: memory.heapTotal,
      external: memory.external,
      arrayBuffers: memory.arrayBuffers,
      handles: process.getActiveResourcesInfo().length,
      eldP50: ms(delay.percentile(50)),
      eldP99: ms(delay.percentile(99)),
      eldMax: ms(delay.max),
    }
    gc()
    const heapLive = process.memoryUsage().heapUsed
    delay.reset()
    heapUsedMin = Number.POSITIVE_INFINITY
    line.heapLive = heapLive
    try {
      appendFileSync(file, `${JSON.stringify(line)}\n`)
    } catch {
      // dropped: see above
    }
  }, intervalMs)
  window.unref()
}
