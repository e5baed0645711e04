import type { FastifyInstance } from 'fastify'
import type { Lifecycle } from './routes/health.js'

/**
 * Graceful drain: stop accepting, report not-ready, let in-flight requests and streams finish,
 * and cut whatever is still open once the drain timeout has passed.
 */

const IDLE_SWEEP_MS = 50

export interface DrainResult {
  readonly drainMs: number
  /** True when the timeout passed and open connections were cut. */
  readonly cut: boolean
}

export async function drain(app: FastifyInstance, lifecycle: Lifecycle, drainTimeoutMs: number): Promise<DrainResult> {
  const startedAt = performance.now()
  lifecycle.draining = true
  let timer: NodeJS.Timeout | undefined
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(resolve, drainTimeoutMs, 'timeout')
  })
  const closed = app.close().then(() => 'closed' as const)
  // server.close() closes the connections idle at that moment; a connection whose last response
  // finishes later would sit in keep-alive until its timeout, so idle ones are swept until done.
  const sweep = setInterval(() => app.server.closeIdleConnections(), IDLE_SWEEP_MS)
  const outcome = await Promise.race([closed, timedOut])
  clearTimeout(timer)
  clearInterval(sweep)
  if (outcome === 'timeout') {
    app.server.closeAllConnections()
    await closed
  }
  return { drainMs: Math.round(performance.now() - startedAt), cut: outcome === 'timeout' }
}
