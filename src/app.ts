import { randomUUID } from 'node:crypto'
import { STATUS_CODES, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify'
import type { DestinationStream, Logger } from 'pino'
import type { Config } from './config.js'
import { proxyError } from './errors.js'
import { createForwarder, MODELS_BREAKER_KEY } from './forward.js'
import { createMetrics, type Metrics } from './metrics.js'
import { createModelsCache } from './models-cache.js'
import { createBreakerRegistry, type BreakerRegistry, type BreakerState } from './upstream/breakers.js'
import { ClientGoneError, createRetrier, isBreakerFailure } from './upstream/retrier.js'
import { createRetryBudget } from './upstream/retry-budget.js'
import { buildLogger } from './logging.js'
import { sendError, toProxyError } from './render-error.js'
import { registerChatCompletionsRoutes } from './routes/chat-completions.js'
import { registerHealthRoutes, type Lifecycle } from './routes/health.js'
import { registerModelsRoutes } from './routes/models.js'
import { buildUpstreamClient, type UpstreamClient } from './upstream/client.js'

/**
 * buildApp wires the server from a validated config and its dependencies. Nothing here runs at
 * import time; main.ts (or a test) decides when to listen.
 */

export interface AppDependencies {
  /** Where log lines go; defaults to stdout. Tests capture it. */
  readonly logDestination?: DestinationStream
  readonly logger?: Logger
  readonly upstream?: UpstreamClient
  /** Source of jitter for backoff, [0, 1); tests fix it. */
  readonly random?: () => number
  /** Monotonic milliseconds. */
  readonly now?: () => number
}

export interface ProxyApp {
  readonly app: FastifyInstance
  readonly lifecycle: Lifecycle
  readonly logger: Logger
  readonly metrics: Metrics
  readonly breakers: BreakerRegistry
}

const REQUEST_OF = Symbol('toprouter.request')
const SANE_REQUEST_ID = /^[A-Za-z0-9._:\-]{1,128}$/
const ALL_METHODS = ['DELETE', 'GET', 'HEAD', 'PATCH', 'POST', 'PUT', 'OPTIONS'] as const

export function buildApp(config: Config, deps: AppDependencies = {}): ProxyApp {
  const logger = deps.logger ?? buildLogger(config.log.level, deps.logDestination)
  const upstream = deps.upstream ?? buildUpstreamClient(config.upstream)
  const now = deps.now ?? (() => performance.now())
  const lifecycle: Lifecycle = { draining: false }
  const metrics = createMetrics(configuredModels(config))
  const breakerEvents = {
    onStateChange(model: string, from: BreakerState, to: BreakerState) {
      metrics.breakerState(model, to)
      logger.warn({ model, from, to, resetTimeoutMs: config.breaker.resetTimeoutMs }, `circuit breaker ${from} -> ${to}`)
    },
    onEvict: (model: string) => metrics.breakerEvicted(model),
  }
  const breakers = createBreakerRegistry({ config: config.breaker, isFailure: isBreakerFailure, events: breakerEvents })
  const modelsBreakers = createBreakerRegistry({ config: config.breaker, isFailure: isBreakerFailure, events: breakerEvents, maxBreakers: 1 })
  const budget = createRetryBudget(config.retry)
  const retrierDeps = {
    retry: config.retry,
    budget,
    metrics,
    secret: config.apiKey,
    maxErrorBodyBytes: config.upstream.maxErrorBodyBytes,
    random: deps.random ?? Math.random,
    now,
  }
  const retrier = createRetrier({ ...retrierDeps, breakers })
  const modelsRetrier = createRetrier({ ...retrierDeps, breakers: modelsBreakers })
  const modelsCache = createModelsCache({ ttlMs: config.models.cacheTtlMs, staleIfErrorMs: config.models.staleIfErrorMs })

  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    // One line per request is written by the onResponse hook below, with the upstream's side.
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'reqId' }),
    bodyLimit: config.server.bodyLimitBytes,
    requestIdHeader: false,
    genReqId: requestIdFrom,
    // Long streams are legitimate; the inbound limits below bound slow clients instead.
    connectionTimeout: 0,
    keepAliveTimeout: config.server.keepAliveTimeoutMs,
    requestTimeout: config.server.requestTimeoutMs,
    http: {
      headersTimeout: config.server.headersTimeoutMs,
      requestTimeout: config.server.requestTimeoutMs,
      // Node checks these timeouts on this interval (default 30 s); keep it finer than the limits.
      connectionsCheckingInterval: Math.min(1000, Math.ceil(config.server.headersTimeoutMs / 2)),
    },
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    routerOptions: { ignoreTrailingSlash: true, ignoreDuplicateSlashes: true, maxParamLength: 500 },
    clientErrorHandler: answerMalformedRequest,
  })

  app.decorateRequest('upstreamTrace', null)
  app.decorateRequest('recorded', false)
  app.decorateRequest('receivedAtMs', 0)

  // The body is kept as bytes: the route validates it and forwards the client's own bytes.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => done(null, body))

  app.addHook('onRequest', (request, reply, done) => {
    request.receivedAtMs = performance.now()
    ;(reply.raw as ServerResponse & { [REQUEST_OF]?: FastifyRequest })[REQUEST_OF] = request
    reply.raw.once('close', recordOnClose)
    reply.header('x-request-id', request.id)
    if (lifecycle.draining && request.url !== '/readyz' && request.url !== '/healthz') {
      reply.header('connection', 'close')
      sendError(reply, proxyError('service_unavailable'))
      return
    }
    done()
  })

  /** One log line and one count per request, whether it finished or its client left. */
  function recordRequest(request: FastifyRequest, status: number, clientGone: boolean): void {
    if (request.recorded) return
    request.recorded = true
    const trace = request.upstreamTrace
    const route = request.routeOptions.url ?? 'unmatched'
    metrics.request(route, status, trace?.model)
    request.log.info(
      {
        method: request.method,
        route,
        status,
        model: trace?.model,
        servedBy: trace?.servedBy,
        attempts: trace?.attempts ?? 0,
        upstreamStatus: trace?.upstreamStatus,
        upstreamMs: trace?.upstreamMs,
        durationMs: Math.round(performance.now() - request.receivedAtMs),
        ...(clientGone ? { clientGone } : {}),
      },
      'request',
    )
  }

  app.addHook('onResponse', (request, reply, done) => {
    recordRequest(request, reply.statusCode, false)
    done()
  })
  // Fastify runs onResponse only for responses it sent that finished; a client that left, or a
  // stream the relay wrote itself (a hijacked reply), is recorded when its response closes.
  // A named function, not a closure per request.
  function recordOnClose(this: ServerResponse & { [REQUEST_OF]?: FastifyRequest }): void {
    const request = this[REQUEST_OF]
    if (request === undefined || request.recorded) return
    const clientGone = !this.writableFinished
    recordRequest(request, this.headersSent ? this.statusCode : 499, clientGone)
  }

  app.setErrorHandler((error, request, reply) => {
    if (error instanceof ClientGoneError) {
      // Nobody is listening; the status only makes the log line and metrics honest.
      return sendError(reply, proxyError('client_closed_request'))
    }
    const proxyErr = toProxyError(error)
    if (proxyErr.status >= 500 && proxyErr.code === 'internal_error') {
      request.log.error({ err: error }, 'unexpected error')
    }
    if (reply.sent || reply.raw.headersSent) {
      reply.raw.destroy()
      return
    }
    return sendError(reply, proxyErr)
  })

  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? ''
    const shown = path.length > 200 ? `${path.slice(0, 200)}…` : path
    return sendError(reply, proxyError('route_not_found', `Unknown route: ${request.method} ${shown}`))
  })

  const forwarder = createForwarder({ config, upstream, retrier, modelsRetrier, budget, metrics, now })
  registerChatCompletionsRoutes(app, forwarder)
  registerModelsRoutes(app, forwarder, modelsCache, metrics, config.apiKey !== undefined)
  registerHealthRoutes(app, lifecycle, { details: () => ({ breakers: { ...modelsBreakers.states(), ...breakers.states() } }) })
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', metrics.registry.contentType)
    return reply.send(await metrics.registry.metrics())
  })
  registerMethodNotAllowed(app, { '/chat/completions': ['POST'], '/v1/chat/completions': ['POST'] })
  registerMethodNotAllowed(app, {
    '/models': ['GET', 'HEAD'],
    '/v1/models': ['GET', 'HEAD'],
    '/models/*': ['GET', 'HEAD'],
    '/v1/models/*': ['GET', 'HEAD'],
    '/healthz': ['GET', 'HEAD'],
    '/readyz': ['GET', 'HEAD'],
    '/metrics': ['GET', 'HEAD'],
  })

  app.addHook('onClose', async () => {
    breakers.shutdown()
    modelsBreakers.shutdown()
    await upstream.close()
  })

  return { app, lifecycle, logger, metrics, breakers }
}

/** Models named in the config get metric labels of their own whatever the traffic. */
function configuredModels(config: Config): string[] {
  return [...new Set([...Object.keys(config.fallbacks), ...Object.values(config.fallbacks).flat(), MODELS_BREAKER_KEY])]
}

function requestIdFrom(request: { headers: Record<string, string | string[] | undefined> }): string {
  const offered = request.headers['x-request-id']
  return typeof offered === 'string' && SANE_REQUEST_ID.test(offered) ? offered : randomUUID()
}

function registerMethodNotAllowed(app: FastifyInstance, allowedByUrl: Record<string, readonly string[]>): void {
  for (const [url, allowed] of Object.entries(allowedByUrl)) {
    const others = ALL_METHODS.filter((method) => !allowed.includes(method))
    app.route({
      method: others,
      url,
      handler: (request, reply) => {
        reply.header('allow', allowed.join(', '))
        return sendError(reply, proxyError('method_not_allowed', `${request.method} is not allowed here; use ${allowed.join(' or ')}`))
      },
    })
  }
}

/** Requests Node's parser rejects (hostile headers, bad framing) still get the error shape. */
function answerMalformedRequest(error: Error & { code?: string }, socket: Socket): void {
  if (!socket.writable) {
    socket.destroy()
    return
  }
  const rejection =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? proxyError('headers_too_large')
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? proxyError('request_timeout')
        : proxyError('invalid_request', 'Malformed HTTP request')
  const body = JSON.stringify(rejection.toBody())
  socket.end(
    `HTTP/1.1 ${rejection.status} ${STATUS_CODES[rejection.status] ?? ''}\r\n` +
      'content-type: application/json; charset=utf-8\r\n' +
      `content-length: ${Buffer.byteLength(body)}\r\n` +
      `x-request-id: ${randomUUID()}\r\n` +
      'x-should-retry: false\r\n' +
      'connection: close\r\n\r\n' +
      body,
  )
}
