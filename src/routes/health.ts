import type { FastifyInstance } from 'fastify'
import { proxyError } from '../errors.js'
import { sendError } from '../render-error.js'

/** Liveness and readiness. Neither ever touches the upstream. */

export interface Lifecycle {
  draining: boolean
}

export interface ReadinessSource {
  /** Extra readiness detail, e.g. breaker states; filled in by the resilience layer. */
  details(): Record<string, unknown>
}

export function registerHealthRoutes(app: FastifyInstance, lifecycle: Lifecycle, readiness: ReadinessSource): void {
  const healthyBody = JSON.stringify({ status: 'ok' })
  app.get('/healthz', (_request, reply) => {
    reply.header('content-type', 'application/json; charset=utf-8')
    return reply.send(healthyBody)
  })
  app.get('/readyz', (_request, reply) => {
    // Like every non-2xx, "not ready" uses the error shape; load balancers only read the status.
    if (lifecycle.draining) return sendError(reply, proxyError('service_unavailable', 'The proxy is draining and will exit soon'))
    reply.header('content-type', 'application/json; charset=utf-8')
    return reply.send(JSON.stringify({ status: 'ready', ...readiness.details() }))
  })
}
