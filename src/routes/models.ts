import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { proxyError } from '../errors.js'
import type { Forwarder } from '../forward.js'
import type { Metrics } from '../metrics.js'
import type { CachedModels, ModelsCache } from '../models-cache.js'

/**
 * `GET /models` → `{baseUrl}/models` (cached, byte for byte); `GET /models/:id` picks one model
 * out of the same cached list (ids contain `/`, so the id is the rest of the path).
 */

export function registerModelsRoutes(app: FastifyInstance, forwarder: Forwarder, cache: ModelsCache, metrics: Metrics, sharedKey: boolean): void {
  async function cachedModels(request: FastifyRequest, reply: FastifyReply, query: string): Promise<CachedModels> {
    // A list fetched with one client's key is never served to another; with the gateway's own
    // key (TOPROUTER_API_KEY) every client's list is the same one.
    const key = sharedKey ? query : `${String(request.headers.authorization ?? '')}\n${query}`
    const models = await cache.get(
      key,
      () => forwarder.fetchModels(request, reply, `/models${query}`),
      (error) => request.log.warn({ code: (error as { code?: unknown }).code }, 'model list refresh failed; serving the stale copy'),
    )
    metrics.modelsCache(models.result)
    reply.header('x-cache', models.result)
    reply.header('age', String(models.ageSeconds))
    if (models.result !== 'MISS') reply.header('x-proxy-attempts', '0')
    return models
  }

  for (const prefix of ['', '/v1']) {
    app.get(`${prefix}/models`, async (request, reply) => {
      const models = await cachedModels(request, reply, queryOf(request.url))
      reply.code(models.response.statusCode).headers(models.response.headers)
      return reply.send(models.response.body)
    })

    app.get(`${prefix}/models/*`, async (request, reply) => {
      const id = (request.params as { '*': string })['*']
      const models = await cachedModels(request, reply, '')
      const model = models.model(id)
      if (model === undefined) throw proxyError('model_not_found', `Model not found: ${id}`)
      reply.header('content-type', 'application/json; charset=utf-8')
      return reply.send(model)
    })
  }
}

function queryOf(url: string): string {
  const index = url.indexOf('?')
  return index === -1 ? '' : url.slice(index)
}
