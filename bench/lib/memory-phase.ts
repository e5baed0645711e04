import { setTimeout as sleep } from 'node:timers/promises'
import { Pool } from 'undici'
import type { MemoryOptions } from './cli.js'
import { socketCount, statusKb } from './proc-stats.js'
import { type ProxyCommand, startHelper, startProxy, stop } from './processes.js'
import type { LogSummary } from './proxy-log.js'
import { CHAT_PATH, REQUEST_HEADERS, STREAM_BODY } from './requests.js'

export interface MemorySetup {
  readonly options: MemoryOptions
  readonly upstreamScript: string
  readonly proxy: ProxyCommand
  /** Working directory of the upstream helper. */
  readonly cwd: string
  readonly logFile: string
}

export interface MemoryResult {
  readonly streams: number
  readonly holdS: number
  readonly chunkDelayMs: number
  readonly config: string
  readonly before: { rssMb: number; sockets: number; upstreamSockets: number; upstreamActiveStreams: number }
  readonly during: {
    rssMb: number
    peakRssMb: number
    sockets: number
    upstreamSockets: number
    upstreamActiveStreams: number
    streamsWithHeaders: number
    streamsWithFirstEvent: number
  }
  readonly after: { rssMb: number; sockets: number; upstreamSockets: number; upstreamActiveStreams: number; secondsAfterClose: number }
  readonly peakRssMb: number
  readonly streamErrors: number
  readonly non2xx: number
  readonly completedBeforeClose: number
  readonly samples: {
    t: number
    rssMb: number
    sockets: number
    upstreamSockets: number
    upstreamActiveStreams: number
    withHeaders: number
    withFirstEvent: number
  }[]
  readonly log?: LogSummary
}

async function activeStreams(upstreamUrl: string): Promise<number> {
  const response = await fetch(`${upstreamUrl}/_bench/stats`)
  return ((await response.json()) as { activeStreams: number }).activeStreams
}

/**
 * Concurrent long streams through a fresh proxy (1000 by default; upstream events 200 ms apart),
 * held open (30 s by default), then every client connection is closed: RSS and open sockets
 * before, during and after. The caller summarises `logFile` once this has stopped the proxy.
 */
export async function memoryPhase(setup: MemorySetup): Promise<MemoryResult> {
  const { streams: streamCount, holdS, settleS, configPath } = setup.options
  const chunkDelayMs = 200
  const upstream = await startHelper({
    name: 'upstream (200 ms chunks)',
    script: setup.upstreamScript,
    args: ['--port', '0', '--chunk-delay-ms', String(chunkDelayMs)],
    cwd: setup.cwd,
  })
  const proxy = await startProxy(setup.proxy, upstream.url, setup.logFile, configPath)
  const mb = (kb: number) => kb / 1024
  try {
    await sleep(500)
    const before = {
      rssMb: mb(statusKb(proxy.pid, 'VmRSS')),
      sockets: socketCount(proxy.pid),
      upstreamSockets: socketCount(upstream.pid),
      upstreamActiveStreams: await activeStreams(upstream.url),
    }
    // Events for longer than the hold, so the streams are still open when the clients leave.
    const chunks = Math.ceil((holdS * 1000) / chunkDelayMs) + 100
    const pool = new Pool(proxy.url, {
      connections: streamCount,
      pipelining: 1,
      keepAliveTimeout: 120_000,
      bodyTimeout: 0,
      headersTimeout: 0,
    })
    const controllers: AbortController[] = []
    let withHeaders = 0
    let withFirstEvent = 0
    let completed = 0
    let streamErrors = 0
    let non2xx = 0
    let closing = false
    const streams = Array.from({ length: streamCount }, async () => {
      const controller = new AbortController()
      controllers.push(controller)
      try {
        const response = await pool.request({
          method: 'POST',
          path: CHAT_PATH,
          headers: { ...REQUEST_HEADERS, 'x-bench-chunks': String(chunks) },
          body: STREAM_BODY,
          signal: controller.signal,
        })
        withHeaders += 1
        if (response.statusCode < 200 || response.statusCode > 299) non2xx += 1
        let first = true
        for await (const _chunk of response.body) {
          if (first) {
            withFirstEvent += 1
            first = false
          }
        }
        completed += 1
      } catch {
        if (!closing) streamErrors += 1
      }
    })
    const samples: MemoryResult['samples'] = []
    const startedAt = performance.now()
    let peakSockets = 0
    let peakUpstreamSockets = 0
    while (performance.now() - startedAt < holdS * 1000) {
      await sleep(1000)
      const sample = {
        t: Math.round((performance.now() - startedAt) / 100) / 10,
        rssMb: mb(statusKb(proxy.pid, 'VmRSS')),
        sockets: socketCount(proxy.pid),
        upstreamSockets: socketCount(upstream.pid),
        upstreamActiveStreams: await activeStreams(upstream.url),
        withHeaders,
        withFirstEvent,
      }
      peakSockets = Math.max(peakSockets, sample.sockets)
      peakUpstreamSockets = Math.max(peakUpstreamSockets, sample.upstreamSockets)
      samples.push(sample)
      process.stdout.write(
        `  [memory] t=${sample.t}s proxy RSS ${sample.rssMb.toFixed(1)} MB, proxy sockets ${sample.sockets}, upstream sockets ${sample.upstreamSockets}, ` +
          `upstream streams ${sample.upstreamActiveStreams}, client streams with headers ${withHeaders}, with an event ${withFirstEvent}\n`,
      )
    }
    const last = samples[samples.length - 1]
    const during = {
      rssMb: last?.rssMb ?? Number.NaN,
      peakRssMb: Math.max(...samples.map((s) => s.rssMb)),
      sockets: peakSockets,
      upstreamSockets: peakUpstreamSockets,
      upstreamActiveStreams: Math.max(...samples.map((s) => s.upstreamActiveStreams)),
      streamsWithHeaders: withHeaders,
      streamsWithFirstEvent: withFirstEvent,
    }
    const completedBeforeClose = completed
    closing = true
    for (const controller of controllers) controller.abort()
    await pool.destroy()
    await Promise.allSettled(streams)
    // Long enough for V8 to give memory back (RSS returns near the baseline after ~30 s).
    await sleep(settleS * 1000)
    const after = {
      rssMb: mb(statusKb(proxy.pid, 'VmRSS')),
      sockets: socketCount(proxy.pid),
      upstreamSockets: socketCount(upstream.pid),
      upstreamActiveStreams: await activeStreams(upstream.url),
      secondsAfterClose: settleS,
    }
    const peakRssMb = mb(statusKb(proxy.pid, 'VmHWM'))
    process.stdout.write(
      `  [memory] ${settleS} s after closing: proxy RSS ${after.rssMb.toFixed(1)} MB, proxy sockets ${after.sockets}, upstream sockets ${after.upstreamSockets}, upstream streams ${after.upstreamActiveStreams}\n`,
    )
    return {
      streams: streamCount,
      holdS,
      chunkDelayMs,
      config: configPath ?? 'default',
      before,
      during,
      after,
      peakRssMb,
      streamErrors,
      non2xx,
      completedBeforeClose,
      samples,
    }
  } finally {
    await stop(proxy)
    await stop(upstream)
  }
}
