import { type ClientRequest, type IncomingMessage, request } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { CHAT_BODY, CHAT_PATH, STREAM_BODY } from '../requests.js'

/**
 * The soak's clients: every request on its own connection (node:http, `agent: false`), so a client
 * that leaves closes its socket as a real one would, and nothing is shared between requests.
 *
 * - Streams: the number open is ramped from 0 to `peakStreams` over `rampS`, then held there; each
 *   one that ends is replaced at once. Each asks for a random length and pace (`x-bench-chunks`,
 *   `x-bench-chunk-delay-ms`), so streams start and end all the time.
 * - Non-streaming requests at `nonStreamingPerS`, evenly spread.
 * - `faultShare` of the requests carry `x-bench-fault`: `reset:50` or `503:50` (each attempt the proxy
 *   makes faults with probability ½, so its retries hide some of them and not others), or, for a
 *   stream, `cut` (the upstream resets the connection after a few events: too late for a retry).
 * - `disconnectShare` of the clients leave on purpose, at a random point: halfway through sending the
 *   body, after the body but before the response headers, or after the headers (mid-stream, after a
 *   random number of events; for a non-streaming request, before reading the body).
 *
 * Every request is counted once by how it ended (`outcome`), and by how far it got.
 */

export interface TrafficOptions {
  readonly url: string
  readonly headers: Readonly<Record<string, string>>
  readonly durationS: number
  readonly rampS: number
  readonly peakStreams: number
  readonly nonStreamingPerS: number
  readonly disconnectShare: number
  readonly faultShare: number
  /** Events per stream, inclusive range. */
  readonly streamChunks: readonly [number, number]
  /** Milliseconds between a stream's events, inclusive range. */
  readonly chunkDelayMs: readonly [number, number]
  /** A request not over after this long counts as hung (a failed run). */
  readonly requestTimeoutMs: number
}

export type Kind = 'stream' | 'nonStreaming'
export type AbortPoint = 'midBody' | 'beforeHeaders' | 'afterHeaders'

export interface TrafficCounts {
  /** Requests whose first byte was written. */
  started: number
  /** …whose whole body was handed to the kernel (`finish`) before the client left: the proxy must record each. */
  bodySent: number
  /** …that got response headers. */
  gotHeaders: number
  byKind: Record<Kind, number>
  /** 2xx with a whole body (streams: ending with `data: [DONE]`). */
  ok: Record<Kind, number>
  /** A non-2xx status (read to the end), by status. */
  statuses: Record<string, number>
  /** Streams that got headers but not `data: [DONE]`: ended early, or their connection reset (an upstream cut passed on). */
  truncatedStreams: number
  /** The connection failed under the client (reset, closed before the headers…). */
  connectionErrors: number
  /** Clients that left on purpose, by where they actually were when they left. */
  aborted: Record<AbortPoint, number>
  /** Requests that asked for a fault, by kind. */
  faultsAsked: { reset: number; status503: number; cut: number }
  /** Not over after `requestTimeoutMs`: destroyed and counted here. */
  hung: number
  /** Open right now / most open at once. */
  openStreams: number
  peakOpenStreams: number
  inFlight: number
}

export function emptyCounts(): TrafficCounts {
  return {
    started: 0,
    bodySent: 0,
    gotHeaders: 0,
    byKind: { stream: 0, nonStreaming: 0 },
    ok: { stream: 0, nonStreaming: 0 },
    statuses: {},
    truncatedStreams: 0,
    connectionErrors: 0,
    aborted: { midBody: 0, beforeHeaders: 0, afterHeaders: 0 },
    faultsAsked: { reset: 0, status503: 0, cut: 0 },
    hung: 0,
    openStreams: 0,
    peakOpenStreams: 0,
    inFlight: 0,
  }
}

const between = (range: readonly [number, number]) => range[0] + Math.floor(Math.random() * (range[1] - range[0] + 1))

interface Plan {
  readonly kind: Kind
  readonly chunks: number
  readonly fault: string | undefined
  readonly cutAfter: number
  readonly leave: { readonly point: AbortPoint; readonly afterEvents: number; readonly delayMs: number } | undefined
}

function planFor(kind: Kind, options: TrafficOptions, counts: TrafficCounts): { plan: Plan; headers: Record<string, string> } {
  const chunks = kind === 'stream' ? between(options.streamChunks) : 0
  const headers: Record<string, string> = { ...options.headers }
  let fault: string | undefined
  let cutAfter = -1
  if (Math.random() < options.faultShare) {
    const roll = Math.random()
    if (kind === 'stream' && roll < 1 / 3) {
      cutAfter = between([1, Math.max(1, chunks - 2)])
      fault = 'cut'
      headers['x-bench-cut-after'] = String(cutAfter)
      counts.faultsAsked.cut += 1
    } else if (roll < 2 / 3) {
      fault = 'reset:50'
      counts.faultsAsked.reset += 1
    } else {
      fault = '503:50'
      counts.faultsAsked.status503 += 1
    }
    headers['x-bench-fault'] = fault
  }
  if (kind === 'stream') {
    headers['x-bench-chunks'] = String(chunks)
    headers['x-bench-chunk-delay-ms'] = String(between(options.chunkDelayMs))
  }
  let leave: Plan['leave']
  if (Math.random() < options.disconnectShare) {
    const roll = Math.random()
    const point: AbortPoint = roll < 0.15 ? 'midBody' : roll < 0.45 ? 'beforeHeaders' : 'afterHeaders'
    leave = { point, afterEvents: kind === 'stream' ? between([1, Math.max(1, chunks - 1)]) : 0, delayMs: Math.random() * 3 }
  }
  return { plan: { kind, chunks, fault, cutAfter, leave }, headers }
}

/** One request, start to end; resolves when it is over however it ended (it never rejects). */
function oneRequest(options: TrafficOptions, counts: TrafficCounts, kind: Kind): Promise<void> {
  const { plan, headers } = planFor(kind, options, counts)
  const body = Buffer.from(kind === 'stream' ? STREAM_BODY : CHAT_BODY)
  counts.started += 1
  counts.byKind[kind] += 1
  counts.inFlight += 1
  if (kind === 'stream') {
    counts.openStreams += 1
    counts.peakOpenStreams = Math.max(counts.peakOpenStreams, counts.openStreams)
  }
  return new Promise<void>((resolve) => {
    let done = false
    let bodySent = false
    let response: IncomingMessage | undefined
    let events = 0
    let tail = ''
    const finish = (outcome: () => void): void => {
      if (done) return
      done = true
      clearTimeout(hung)
      outcome()
      counts.inFlight -= 1
      if (kind === 'stream') counts.openStreams -= 1
      resolve()
    }
    const leaveNow = (): void => {
      finish(() => {
        counts.aborted[response !== undefined ? 'afterHeaders' : bodySent ? 'beforeHeaders' : 'midBody'] += 1
      })
      req.destroy()
    }
    const hung = setTimeout(() => {
      finish(() => {
        counts.hung += 1
      })
      req.destroy()
    }, options.requestTimeoutMs)
    const req: ClientRequest = request(`${options.url}${CHAT_PATH}`, {
      method: 'POST',
      agent: false,
      headers: { ...headers, 'content-length': String(body.length) },
    })
    req.on('error', () => finish(() => (counts.connectionErrors += 1)))
    req.on('finish', () => {
      bodySent = true
      counts.bodySent += 1
      if (plan.leave?.point === 'beforeHeaders') setTimeout(leaveNow, plan.leave.delayMs)
    })
    req.on('response', (res) => {
      response = res
      counts.gotHeaders += 1
      if (plan.leave?.point === 'afterHeaders' && kind === 'nonStreaming') return leaveNow()
      const ok = res.statusCode !== undefined && res.statusCode >= 200 && res.statusCode < 300
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => {
        if (done) return
        tail = (tail + chunk).slice(-64)
        if (kind === 'stream' && ok && plan.leave?.point === 'afterHeaders') {
          for (let i = chunk.indexOf('\n\n'); i !== -1; i = chunk.indexOf('\n\n', i + 2)) events += 1
          if (events >= plan.leave.afterEvents) leaveNow()
        }
      })
      res.on('end', () =>
        finish(() => {
          if (!ok) counts.statuses[String(res.statusCode)] = (counts.statuses[String(res.statusCode)] ?? 0) + 1
          else if (kind === 'stream' && !tail.includes('data: [DONE]')) counts.truncatedStreams += 1
          else counts.ok[kind] += 1
        }),
      )
      // Cut under the client after the headers (an upstream cut the proxy passed on as a reset).
      const cut = () =>
        finish(() => {
          if (kind === 'stream') counts.truncatedStreams += 1
          else counts.connectionErrors += 1
        })
      res.on('error', cut)
      res.on('aborted', cut)
      res.on('close', cut)
    })
    if (plan.leave?.point === 'midBody') {
      // Headers and half the body, then gone: the proxy never gets a whole request.
      req.write(body.subarray(0, body.length >> 1), () => setTimeout(leaveNow, plan.leave?.delayMs ?? 0))
    } else req.end(body)
  })
}

/**
 * Runs the load for `durationS`, then waits (up to `requestTimeoutMs`) for what is still in flight.
 * `counts` is updated live, so the sampler can print it while the load runs.
 */
export async function runTraffic(options: TrafficOptions, counts: TrafficCounts): Promise<void> {
  const pending = new Set<Promise<void>>()
  const track = (promise: Promise<void>) => {
    pending.add(promise)
    void promise.then(() => pending.delete(promise))
  }
  const started = performance.now()
  let nonStreamingSent = 0
  const tickMs = 20
  for (;;) {
    const elapsedS = (performance.now() - started) / 1000
    if (elapsedS >= options.durationS) break
    const target = Math.round(options.peakStreams * Math.min(1, elapsedS / Math.max(options.rampS, 0.001)))
    // At most 50 new streams per tick, so a ramp does not arrive as one burst.
    for (let i = 0; i < 50 && counts.openStreams < target; i += 1) track(oneRequest(options, counts, 'stream'))
    const due = Math.floor(elapsedS * options.nonStreamingPerS)
    for (; nonStreamingSent < due; nonStreamingSent += 1) track(oneRequest(options, counts, 'nonStreaming'))
    await sleep(tickMs)
  }
  await Promise.all(pending)
}
