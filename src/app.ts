import { randomUUID } from 'node:crypto'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify'
import type { DestinationStream, Logger } from 'pino'
import { Registry } from 'prom-client'
import { createFallbackChain } from './chat/fallback-chain.js'
import type { Config } from './config.js'
import { createStreamContinuer } from './continuation/continuation.js'
import { breakerVerdict } from './failures.js'
import { registerFrontDoor } from './front-door.js'
import { Lifecycle } from './lifecycle.js'
import { buildLogger } from './logging.js'
import { createMetrics, type Metrics } from './metrics.js'
import { createModelsCache } from './models-cache.js'
import { answerMalformedRequest, replyWithError, sendError, toProxyError } from './reply/render-error.js'
import { registerRequestLog } from './request-log.js'
import { createChatCompletionsHandler } from './routes/chat-completions.js'
import { createHealthHandlers } from './routes/health.js'
import { createModelsHandlers, MODELS_BREAKER_KEY } from './routes/models.js'
import { type RouteEntry, registerRouteTable } from './routes/table.js'
import type { TeamMode } from './team/team-mode.js'
import { NO_TRACER, type RequestTracer } from './tracing/request-tracer.js'
import { createAttempter } from './upstream/attempt.js'
import { type BreakerEvents, type BreakerRegistry, createBreakerRegistry } from './upstream/breakers.js'
import { buildUpstreamClient, type UpstreamClient } from './upstream/client.js'
import { NO_MODEL_PAUSES } from './upstream/model-pauses.js'
import { createRetrier } from './upstream/retrier.js'
import { createRetryBudget } from './upstream/retry-budget.js'
import { createUpstreamAuth } from './upstream-auth.js'

/**
 * buildApp wires the server from a validated config and its dependencies: it builds each part
 * once, hands each the parts below it, and registers the route table. No policy lives here, and
 * nothing runs at import time; main.ts (or a test) decides when to listen.
 */

export interface AppDependencies {
  /** Where log lines go; defaults to stdout. Tests capture it. */
  readonly logDestination?: DestinationStream
  readonly logger?: Logger
  readonly upstream?: UpstreamClient
  /** Source of jitter for backoff, [0, 1); tests fix it. */
  readonly random?: () => number
  /** Monotonic milliseconds, for every timer the proxy reads. */
  readonly now?: () => number
  /** Wall-clock milliseconds, for `Retry-After` HTTP-dates. */
  readonly wallClockNow?: () => number
  /** Team mode, opened by the caller (team/team-mode.ts: the store is opened asynchronously); closed with the app. */
  readonly team?: TeamMode
  /** Tracing, opened by the caller (tracing/otel-tracer.ts, loaded only when enabled); shut down with the app. @default NO_TRACER */
  readonly tracer?: RequestTracer
}

export interface ProxyApp {
  readonly app: FastifyInstance
  readonly lifecycle: Lifecycle
  readonly logger: Logger
  readonly metrics: Metrics
  readonly breakers: BreakerRegistry
}

const SANE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

export function buildApp(config: Config, deps: AppDependencies = {}): ProxyApp {
  const logger = deps.logger ?? buildLogger(config.log.level, deps.logDestination)
  const upstream = deps.upstream ?? buildUpstreamClient(config.upstream)
  const now = deps.now ?? (() => performance.now())
  const random = deps.random ?? Math.random
  const wallClockNow = deps.wallClockNow ?? Date.now
  const lifecycle = new Lifecycle()
  const metrics = createMetrics(configuredModels(config))
  const team = deps.team
  if (config.team.enabled !== (team !== undefined)) throw new Error('team.enabled and the team mode passed to buildApp disagree')
  const metricsRegistry = team === undefined ? metrics.registry : Registry.merge([metrics.registry, team.registry])

  const breakerEvents: BreakerEvents = {
    onStateChange(model, from, to) {
      metrics.breakerState(model, to)
      logger.warn({ model, from, to, resetTimeoutMs: config.breaker.resetTimeoutMs }, `circuit breaker ${from} -> ${to}`)
    },
    onEvict: (model) => metrics.breakerEvicted(model),
  }
  const breakers = createBreakerRegistry({ config: config.breaker, judge: breakerVerdict, events: breakerEvents, now })
  const modelsBreakers = createBreakerRegistry({
    config: config.breaker,
    judge: breakerVerdict,
    events: breakerEvents,
    maxBreakers: 1,
    now,
  })
  const budget = createRetryBudget(config.retry, now)
  const attempter = createAttempter({
    upstream,
    timeouts: config.upstream,
    secret: config.apiKey,
    now,
    wallClockNow,
  })
  const retrierDeps = { retry: config.retry, budget, attempter, metrics, random, now }
  // A fleet (team mode with Redis) shares a 429's pushback: the model is paused on every replica.
  // One proxy on its own keeps round 1's behaviour: each request retries within its own pushback.
  const pauses = team?.modelPauses ?? NO_MODEL_PAUSES
  const chatRetrier = createRetrier({ ...retrierDeps, breakers, pauses, wallClockNow })
  const chain = createFallbackChain({ retrier: chatRetrier, fallbacks: config.fallbacks, metrics })
  const continuer = config.streams.continuation.enabled
    ? createStreamContinuer({ config: config.streams.continuation, retrier: chatRetrier, metrics, now, inFlight: lifecycle.waiting })
    : undefined
  const auth = createUpstreamAuth(config.apiKey)
  const tracer = deps.tracer ?? NO_TRACER
  const routeDeps = { auth, budget, lifecycle, metrics, config, now, tracer }

  const chat = createChatCompletionsHandler({ ...routeDeps, chain, team: team?.gateway, continuer })
  const models = createModelsHandlers({
    ...routeDeps,
    team: team?.gateway,
    retrier: createRetrier({ ...retrierDeps, breakers: modelsBreakers }),
    cache: createModelsCache({ ttlMs: config.models.cacheTtlMs, staleIfErrorMs: config.models.staleIfErrorMs, now }),
  })
  const health = createHealthHandlers(lifecycle, () => ({
    breakers: { ...modelsBreakers.states(), ...breakers.states() },
    ...(team === undefined ? {} : { degraded: team.degraded() }),
  }))
  const routes: RouteEntry[] = [
    { method: 'POST', urls: ['/chat/completions', '/v1/chat/completions'], handler: chat },
    { method: 'GET', urls: ['/models', '/v1/models'], handler: models.list },
    { method: 'GET', urls: ['/models/*', '/v1/models/*'], handler: models.one },
    { method: 'GET', urls: ['/healthz'], handler: health.live, servesWhileDraining: true },
    { method: 'GET', urls: ['/readyz'], handler: health.ready, servesWhileDraining: true },
    {
      method: 'GET',
      urls: ['/metrics'],
      handler: async (_request, reply) => reply.header('content-type', metricsRegistry.contentType).send(await metricsRegistry.metrics()),
    },
    ...(team?.adminRoutes(config.adminKey) ?? []),
  ]

  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    // One line per request is written by request-log.ts, with the upstream's side.
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'reqId' }),
    bodyLimit: config.server.bodyLimitBytes,
    requestIdHeader: false,
    genReqId: requestIdFrom,
    // Long streams are legitimate; the inbound limits below bound slow clients instead.
    connectionTimeout: 0,
    keepAliveTimeout: config.server.keepAliveTimeoutMs,
    requestTimeout: config.server.requestTimeoutMs,
    http: {
      // front-door.ts answers a missing Host in the error shape rather than Node's bare 400.
      requireHostHeader: false,
      headersTimeout: config.server.headersTimeoutMs,
      requestTimeout: config.server.requestTimeoutMs,
      // Node checks these timeouts on this interval (default 30 s); keep it finer than the limits.
      connectionsCheckingInterval: Math.min(1000, Math.ceil(config.server.headersTimeoutMs / 2)),
    },
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    routerOptions: { ignoreTrailingSlash: true, ignoreDuplicateSlashes: true, maxParamLength: 500 },
    clientErrorHandler: answerMalformedRequest,
    // Errors Fastify raises before routing (a malformed percent-escape in the path) bypass the error
    // handler; without this they get Fastify's own body instead of the error shape.
    frameworkErrors: (error, request, reply) => {
      reply.header('x-request-id', request.id)
      return sendError(reply, toProxyError(error))
    },
  })

  // The body is kept as bytes: the route validates it and forwards the client's own bytes.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => done(null, body))
  app.addHook('onRequest', (request, reply, done) => {
    reply.header('x-request-id', request.id)
    done()
  })
  registerRequestLog(app, metrics, now)
  registerFrontDoor(app)
  registerRouteTable(app, routes, lifecycle)
  app.setErrorHandler(replyWithError)
  app.addHook('onClose', async () => {
    breakers.shutdown()
    modelsBreakers.shutdown()
    await upstream.close()
    // Last: every request has ended, so every usage record is queued.
    await team?.close()
    // Every request has ended, so every span has: the last batch is exported.
    await tracer.shutdown()
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
