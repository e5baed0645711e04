import type { FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify'
import type { Config } from '../config.js'
import { proxyError } from '../errors.js'
import { forwardableResponseHeaders } from '../http-headers.js'
import type { Lifecycle } from '../lifecycle.js'
import type { Metrics } from '../metrics.js'
import type { CachedModels, CachedResponse, ModelsCache } from '../models-cache.js'
import { startRequestClock } from '../request-clock.js'
import { startTrace } from '../request-log.js'
import type { Retrier, RetryOutcome } from '../upstream/retrier.js'
import type { RetryBudget } from '../upstream/retry-budget.js'
import type { UpstreamAuth } from '../upstream-auth.js'
import { querySuffix } from './table.js'

/**
 * `GET /models` → `{baseUrl}/models` (cached, byte for byte); `GET /models/:id` picks one model
 * out of the same cached list (ids contain `/`, so the id is the rest of the path).
 */

/** The `/models` breaker's key: its own registry, so no chat model id can share it. */
export const MODELS_BREAKER_KEY = '/models'

export interface ModelsRouteDeps {
  /** The retrier over the `/models` breaker registry. */
  readonly retrier: Retrier
  readonly cache: ModelsCache
  readonly auth: UpstreamAuth
  readonly budget: RetryBudget
  readonly lifecycle: Lifecycle
  readonly metrics: Metrics
  readonly config: Config
  readonly now: () => number
}

export function createModelsHandlers(deps: ModelsRouteDeps): { list: RouteHandlerMethod; one: RouteHandlerMethod } {
  const { retrier, cache, auth, budget, lifecycle, metrics, config, now } = deps

  /** One upstream fetch of the list, through the retrier; a failure rejects (the cache may serve stale). */
  async function fetchModels(request: FastifyRequest, reply: FastifyReply, query: string): Promise<CachedResponse> {
    const headers = auth.headersFor(request.headers, request.id, false)
    const trace = startTrace(request, undefined)
    // Not tied to this client: the fetch is shared by every caller waiting on the cache.
    const clock = startRequestClock(request.headers, {
      requestTimeoutMs: config.upstream.requestTimeoutMs,
      nowMs: now(),
      response: undefined,
      inFlight: lifecycle.waiting,
    })
    budget.recordRequest()
    let outcome: RetryOutcome
    try {
      outcome = await retrier.run({
        key: MODELS_BREAKER_KEY,
        spec: { method: 'GET', path: `/models${query}`, headers, body: undefined, stream: false },
        clock,
        trace,
        log: request.log,
        hasNextModel: false,
      })
    } finally {
      clock.release()
      trace.attempts = clock.attempts
      if (!reply.sent) reply.header('x-proxy-attempts', String(clock.attempts))
    }
    if (!outcome.ok) throw outcome.failure
    const { response, body } = outcome.served
    return {
      statusCode: response.statusCode,
      headers: forwardableResponseHeaders(response.headers, false, config.apiKey),
      body: body ?? Buffer.alloc(0),
    }
  }

  async function cachedModels(request: FastifyRequest, reply: FastifyReply, query: string): Promise<CachedModels> {
    // A list fetched with one client's key is never served to another; with the gateway's own
    // key (TOPROUTER_API_KEY) every client's list is the same one.
    const key = auth.sharedKey ? query : `${String(request.headers.authorization ?? '')}\n${query}`
    const models = await cache.get(
      key,
      () => fetchModels(request, reply, query),
      (error) => request.log.warn({ code: (error as { code?: unknown }).code }, 'model list refresh failed; serving the stale copy'),
    )
    metrics.modelsCache(models.result)
    reply.header('x-cache', models.result)
    reply.header('age', String(models.ageSeconds))
    if (models.result !== 'MISS') reply.header('x-proxy-attempts', '0')
    return models
  }

  return {
    async list(request, reply) {
      const models = await cachedModels(request, reply, querySuffix(request.url))
      reply.code(models.response.statusCode).headers(models.response.headers)
      return reply.send(models.response.body)
    },
    async one(request, reply) {
      const id = (request.params as { '*': string })['*']
      const models = await cachedModels(request, reply, '')
      const model = models.model(id)
      if (model === undefined) throw proxyError('model_not_found', `Model not found: ${id}`)
      reply.header('content-type', 'application/json; charset=utf-8')
      return reply.send(model)
    },
  }
}
