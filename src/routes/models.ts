import type { FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify'
import { proxyError } from '../errors.js'
import { forwardableResponseHeaders, withoutRateLimitHeaders } from '../http-headers.js'
import type { CachedModels, CachedResponse, ModelsCache } from '../models-cache.js'
import type { TeamGateway } from '../team/gateway.js'
import type { Retrier, RetryOutcome } from '../upstream/retrier.js'
import { querySuffix } from './table.js'
import { finishUpstreamRequest, startUpstreamRequest, type UpstreamRouteDeps } from './upstream-request.js'

/**
 * `GET /models` → `{baseUrl}/models` (cached, byte for byte); `GET /models/:id` picks one model
 * out of the same cached list (ids contain `/`, so the id is the rest of the path).
 */

/** The `/models` breaker's key: its own registry, so no chat model id can share it. */
export const MODELS_BREAKER_KEY = '/models'

export interface ModelsRouteDeps extends UpstreamRouteDeps {
  /** The retrier over the `/models` breaker registry. */
  readonly retrier: Retrier
  readonly cache: ModelsCache
  /** Team mode: the member's key decides what the list shows. */
  readonly team: TeamGateway | undefined
}

export function createModelsHandlers(deps: ModelsRouteDeps): { list: RouteHandlerMethod; one: RouteHandlerMethod } {
  const { retrier, cache, auth, metrics, config, team } = deps

  /** One upstream fetch of the list, through the retrier; a failure rejects (the cache may serve stale). */
  async function fetchModels(request: FastifyRequest, reply: FastifyReply, query: string): Promise<CachedResponse> {
    // Not tied to this client: the fetch is shared by every caller waiting on the cache.
    const started = startUpstreamRequest(deps, request, { model: undefined, hasBody: false, followClient: undefined })
    const { headers, clock, trace } = started
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
      finishUpstreamRequest(started)
      if (!reply.sent) reply.header('x-proxy-attempts', String(clock.attempts))
    }
    if (!outcome.ok) throw outcome.failure
    const { response, body } = outcome.served
    if (response.statusCode === 200 && body !== undefined) team?.learnPrices(body)
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
      const key = await team?.authenticate(request.headers.authorization)
      const models = await cachedModels(request, reply, querySuffix(request.url))
      const { statusCode, headers, body } = models.response
      reply.code(statusCode).headers(key === undefined ? headers : withoutRateLimitHeaders(headers))
      return reply.send(key !== undefined && team !== undefined && statusCode === 200 ? team.modelListFor(key, body) : body)
    },
    async one(request, reply) {
      const id = (request.params as { '*': string })['*']
      const key = await team?.authenticate(request.headers.authorization)
      const models = await cachedModels(request, reply, '')
      // A model the key may not use is not there, as far as the member can tell.
      const model = key !== undefined && team !== undefined && !team.mayUse(key, id) ? undefined : models.model(id)
      if (model === undefined) throw proxyError('model_not_found', `Model not found: ${id}`)
      reply.header('content-type', 'application/json; charset=utf-8')
      return reply.send(model)
    },
  }
}
