import { randomUUID } from 'node:crypto'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify'
import type { DestinationStream, Logger } from 'pino'
import { Registry } from 'prom-client'
import type { Config } from './config.js'
import { createConfigReloader, type ReloadReport } from './config-reload.js'
import { registerFrontDoor } from './front-door.js'
import { Lifecycle } from './lifecycle.js'
import { buildLogger } from './logging.js'
import { createMetrics, type Metrics } from './metrics.js'
import { answerMalformedRequest, replyWithError, sendError, toProxyError } from './reply/render-error.js'
import { registerRequestLog } from './request-log.js'
import { createHealthHandlers } from './routes/health.js'
import { MODELS_BREAKER_KEY } from './routes/models.js'
import { type RouteEntry, registerRouteTable } from './routes/table.js'
import { buildRuntime, type Runtime, type RuntimeParts } from './runtime.js'
import { createStatusRecorder, withStatusRecorder } from './status/status-recorder.js'
import { createStatusRoutes } from './status/status-routes.js'
import type { TeamMode } from './team/team-mode.js'
import { NO_TRACER, type RequestTracer } from './tracing/request-tracer.js'
import type { BreakerRegistry } from './upstream/breakers.js'
import { buildUpstreamClient, type UpstreamClient } from './upstream/client.js'

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
  /** Loads the config from the startup sources again, for a reload (SIGHUP, `POST /admin/reload`). */
  readonly reloadConfig?: () => Config
  /** Tracing, opened by the caller (tracing/otel-tracer.ts, loaded only when enabled); shut down with the app. @default NO_TRACER */
  readonly tracer?: RequestTracer
}

export interface ProxyApp {
  readonly app: FastifyInstance
  readonly lifecycle: Lifecycle
  readonly logger: Logger
  readonly metrics: Metrics
  /** The chat breakers of the running snapshot. */
  readonly breakers: BreakerRegistry
  /** The config new requests use: the startup one, or the last one a reload applied. */
  runningConfig(): Config
  /** Loads the config again (`reloadConfig`) and applies what it can; logs the outcome. */
  reload(): ReloadReport
}

const SANE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

export function buildApp(config: Config, deps: AppDependencies = {}): ProxyApp {
  const logger = deps.logger ?? buildLogger(config.log.level, deps.logDestination)
  const upstream = deps.upstream ?? buildUpstreamClient(config.upstream)
  const now = deps.now ?? (() => performance.now())
  const random = deps.random ?? Math.random
  const wallClockNow = deps.wallClockNow ?? Date.now
  const lifecycle = new Lifecycle()
  const team = deps.team
  const promMetrics = createMetrics(configuredModels(config))
  const status = createStatusRecorder({
    modelLabel: promMetrics.modelLabel,
    now: wallClockNow,
    team: team !== undefined,
    modelsRow: MODELS_BREAKER_KEY,
  })
  team?.onKeyRequest((keyName, _status, tokens) => status.keyRequest(keyName, tokens))
  const metrics = withStatusRecorder(promMetrics, status)
  if (config.team.enabled !== (team !== undefined)) throw new Error('team.enabled and the team mode passed to buildApp disagree')

  const tracer = deps.tracer ?? NO_TRACER
  const parts: RuntimeParts = { logger, upstream, lifecycle, metrics, team, now, random, wallClockNow, tracer }
  // The snapshot new requests use; a reload swaps it (runtime.ts). Each handler reads it once.
  let runtime = buildRuntime(config, parts)
  const retired = new Set<BreakerRegistry>()
  const health = createHealthHandlers(lifecycle, () => ({
    breakers: { ...runtime.modelsBreakers.states(), ...runtime.breakers.states() },
    ...(team === undefined ? {} : { degraded: team.degraded() }),
  }))
  const reload = createConfigReloader({
    running: () => runtime.config,
    load: deps.reloadConfig ?? (() => runtime.config),
    registry: metrics.registry,
    logger,
    apply(next) {
      const previous = runtime
      runtime = buildRuntime(next, parts, previous)
      if (next.log.level !== previous.config.log.level) {
        logger.level = next.log.level
        app.log.level = next.log.level
      }
      if (runtime.breakers !== previous.breakers) retireBreakers(previous, next)
      if (next.team !== previous.config.team) team?.gateway.reconfigure(next.team)
    },
  })
  /**
   * breaker.* changed: every breaker starts again, closed, with the new settings. The old ones
   * still serve the requests in flight; they are shut down once those have met their deadline.
   */
  function retireBreakers(previous: Runtime, next: Config): void {
    for (const registry of [previous.breakers, previous.modelsBreakers]) {
      for (const key of Object.keys(registry.states())) metrics.breakerEvicted(key)
      retired.add(registry)
    }
    const timer = setTimeout(
      () => {
        for (const registry of [previous.breakers, previous.modelsBreakers]) {
          registry.shutdown()
          retired.delete(registry)
        }
      },
      Math.max(previous.config.upstream.requestTimeoutMs, next.upstream.requestTimeoutMs),
    )
    timer.unref()
  }
  // After the reloader: its counter is one of the app's metrics.
  const metricsRegistry = team === undefined ? metrics.registry : Registry.merge([metrics.registry, team.registry])
  const routes: RouteEntry[] = [
    {
      method: 'POST',
      urls: ['/chat/completions', '/v1/chat/completions'],
      handler: (request, reply) => runtime.chat.call(app, request, reply),
    },
    { method: 'GET', urls: ['/models', '/v1/models'], handler: (request, reply) => runtime.modelsList.call(app, request, reply) },
    { method: 'GET', urls: ['/models/*', '/v1/models/*'], handler: (request, reply) => runtime.modelsOne.call(app, request, reply) },
    { method: 'GET', urls: ['/healthz'], handler: health.live, servesWhileDraining: true },
    { method: 'GET', urls: ['/readyz'], handler: health.ready, servesWhileDraining: true },
    {
      method: 'GET',
      urls: ['/metrics'],
      handler: async (_request, reply) => reply.header('content-type', metricsRegistry.contentType).send(await metricsRegistry.metrics()),
    },
    ...(team?.adminRoutes(config.adminKey, reload) ?? []),
    ...createStatusRoutes({
      recorder: status,
      breakerStates: () => ({ ...runtime.modelsBreakers.states(), ...runtime.breakers.states() }),
      team: team === undefined ? undefined : { adminKey: config.adminKey },
    }),
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
  registerRequestLog(app, metrics, now, status.requestEnded)
  registerFrontDoor(app)
  registerRouteTable(app, routes, lifecycle)
  app.setErrorHandler(replyWithError)
  app.addHook('onClose', async () => {
    runtime.breakers.shutdown()
    runtime.modelsBreakers.shutdown()
    for (const registry of retired) registry.shutdown()
    await upstream.close()
    // Last: every request has ended, so every usage record is queued.
    await team?.close()
    // Every request has ended, so every span has: the last batch is exported.
    await tracer.shutdown()
  })

  return {
    app,
    lifecycle,
    logger,
    metrics,
    get breakers() {
      return runtime.breakers
    },
    runningConfig: () => runtime.config,
    reload,
  }
}

/** Models named in the config get metric labels of their own whatever the traffic. */
function configuredModels(config: Config): string[] {
  return [...new Set([...Object.keys(config.fallbacks), ...Object.values(config.fallbacks).flat(), MODELS_BREAKER_KEY])]
}

function requestIdFrom(request: { headers: Record<string, string | string[] | undefined> }): string {
  const offered = request.headers['x-request-id']
  return typeof offered === 'string' && SANE_REQUEST_ID.test(offered) ? offered : randomUUID()
}
