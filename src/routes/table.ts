import type { FastifyInstance, RouteHandlerMethod } from 'fastify'
import { proxyError } from '../errors.js'
import type { Lifecycle } from '../lifecycle.js'
import { sendError } from '../reply/render-error.js'

/**
 * The route table: every route the proxy serves, registered from one list. Method-not-allowed
 * answers (with `Allow`) and the draining refusal are derived from it, so a new route is one entry.
 * Anything not in the table is a 404 in the error shape: the proxy is never an open proxy.
 */

export interface RouteEntry {
  /** GET routes answer HEAD too (Fastify's exposeHeadRoutes). Entries may share a URL with different methods. */
  readonly method: 'GET' | 'POST' | 'PATCH' | 'DELETE'
  readonly urls: readonly string[]
  readonly handler: RouteHandlerMethod
  /** Health checks keep answering while the proxy drains; everything else gets 503. */
  readonly servesWhileDraining?: boolean
}

declare module 'fastify' {
  interface FastifyContextConfig {
    servesWhileDraining?: boolean
  }
}

const ALL_METHODS = ['DELETE', 'GET', 'HEAD', 'PATCH', 'POST', 'PUT', 'OPTIONS'] as const

export function registerRouteTable(app: FastifyInstance, table: readonly RouteEntry[], lifecycle: Lifecycle): void {
  app.addHook('onRequest', (request, reply, done) => {
    if (lifecycle.draining && request.routeOptions.config?.servesWhileDraining !== true) {
      reply.header('connection', 'close')
      sendError(reply, proxyError('service_unavailable'))
      return
    }
    done()
  })

  // Allow is per URL: several entries (GET and POST, say) may serve one URL.
  const allowedByUrl = new Map<string, string[]>()
  for (const entry of table) {
    const config = { servesWhileDraining: entry.servesWhileDraining === true }
    for (const url of entry.urls) {
      app.route({ method: entry.method, url, config, handler: entry.handler })
      const allowed = allowedByUrl.get(url) ?? []
      allowed.push(...(entry.method === 'GET' ? ['GET', 'HEAD'] : [entry.method]))
      allowedByUrl.set(url, allowed)
    }
  }
  for (const [url, allowed] of allowedByUrl) {
    const others = ALL_METHODS.filter((method) => !allowed.includes(method))
    if (others.length === 0) continue
    app.route({
      method: others,
      url,
      handler: (request, reply) => {
        reply.header('allow', allowed.join(', '))
        return sendError(reply, proxyError('method_not_allowed', `${request.method} is not allowed here; use ${allowed.join(' or ')}`))
      },
    })
  }

  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? ''
    const shown = path.length > 200 ? `${path.slice(0, 200)}…` : path
    return sendError(reply, proxyError('route_not_found', `Unknown route: ${request.method} ${shown}`))
  })
}

/** The query string of a request URL, `?` included, or ''. */
export function querySuffix(url: string): string {
  const index = url.indexOf('?')
  return index === -1 ? '' : url.slice(index)
}
