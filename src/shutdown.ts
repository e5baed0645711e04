import type { FastifyInstance } from 'fastify'
import type { Lifecycle } from './lifecycle.js'

/**
 * Graceful drain: stop accepting, report not-ready, let in-flight requests and streams finish.
 * At the drain timeout nothing is cut silently: a request still waiting for the upstream is
 * answered 503 and an open stream gets a final error event; then whatever is left is closed.
 */

const IDLE_SWEEP_MS = 50
/** How long the answers written at the timeout get to reach their clients before sockets close. */
const FINAL_WRITE_GRACE_MS = 1000

export interface DrainResult {
  readonly drainMs: number
  /** True when the timeout passed and in-flight work was ended. */
  readonly cut: boolean
  readonly interruptedRequests: number
  readonly interruptedStreams: number
}

export async function drain(app: FastifyInstance, lifecycle: Lifecycle, drainTimeoutMs: number): Promise<DrainResult> {
  const startedAt = performance.now()
  lifecycle.draining = true
  const closed = app.close().then(() => 'closed' as const)
  // server.close() closes the connections idle at that moment; a connection whose last response
  // finishes later would sit in keep-alive until its timeout, so idle ones are swept until done.
  const sweep = setInterval(() => app.server.closeIdleConnections(), IDLE_SWEEP_MS)
  const outcome = await Promise.race([closed, delay(drainTimeoutMs, 'timeout' as const)])
  let interrupted = { requests: 0, streams: 0 }
  if (outcome === 'timeout') {
    interrupted = lifecycle.interruptInFlight()
    if ((await Promise.race([closed, delay(FINAL_WRITE_GRACE_MS, 'timeout' as const)])) === 'timeout') app.server.closeAllConnections()
    await closed
  }
  clearInterval(sweep)
  return {
    drainMs: Math.round(performance.now() - startedAt),
    cut: outcome === 'timeout',
    interruptedRequests: interrupted.requests,
    interruptedStreams: interrupted.streams,
  }
}

function delay<T>(ms: number, value: T): Promise<T> {
  return new Promise((resolve) => setTimeout(resolve, ms, value).unref())
}
