import type { RouteHandlerMethod } from 'fastify'
import { proxyError } from '../errors.js'
import type { Lifecycle } from '../lifecycle.js'
import { sendError } from '../reply/render-error.js'

/** Liveness and readiness. Neither ever touches the upstream. */

export interface HealthHandlers {
  readonly live: RouteHandlerMethod
  readonly ready: RouteHandlerMethod
}

/** @param readinessDetails extra readiness detail, e.g. breaker states. */
export function createHealthHandlers(lifecycle: Lifecycle, readinessDetails: () => Record<string, unknown>): HealthHandlers {
  const healthyBody = JSON.stringify({ status: 'ok' })
  return {
    live(_request, reply) {
      reply.header('content-type', 'application/json; charset=utf-8')
      return reply.send(healthyBody)
    },
    ready(_request, reply) {
      // Like every non-2xx, "not ready" uses the error shape; load balancers only read the status.
      if (lifecycle.draining) return sendError(reply, proxyError('service_unavailable', 'The proxy is draining and will exit soon'))
      reply.header('content-type', 'application/json; charset=utf-8')
      return reply.send(JSON.stringify({ status: 'ready', ...readinessDetails() }))
    },
  }
}
