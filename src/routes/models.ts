import type { FastifyInstance } from 'fastify'
import { proxyError } from '../errors.js'
import type { Forwarder } from '../forward.js'

/**
 * `GET /models` → `{baseUrl}/models`, passed through byte for byte; `GET /models/:id` picks one
 * model out of that list (ids contain `/`, so the id is the rest of the path).
 */

export function registerModelsRoutes(app: FastifyInstance, forwarder: Forwarder): void {
  const target = { method: 'GET', path: '/models', stream: false, model: undefined } as const

  for (const prefix of ['', '/v1']) {
    app.get(`${prefix}/models`, async (request, reply) => {
      const models = await forwarder.fetchBuffered(request, reply, target)
      reply.code(models.statusCode).headers(models.headers)
      return reply.send(models.body)
    })

    app.get(`${prefix}/models/*`, async (request, reply) => {
      const id = (request.params as { '*': string })['*']
      const models = await forwarder.fetchBuffered(request, reply, target)
      const model = findModel(models.body, id)
      if (model === undefined) throw proxyError('model_not_found', `Model not found: ${id}`)
      reply.header('content-type', 'application/json; charset=utf-8')
      return reply.send(JSON.stringify(model))
    })
  }
}

export function findModel(listBody: Buffer, id: string): unknown {
  let list: unknown
  try {
    list = JSON.parse(listBody.toString('utf8'))
  } catch {
    throw proxyError('invalid_upstream_response', 'The upstream model list is not valid JSON')
  }
  const data = (list as { data?: unknown } | null)?.data
  if (!Array.isArray(data)) throw proxyError('invalid_upstream_response', 'The upstream model list has no `data` array')
  return data.find((entry: unknown) => (entry as { id?: unknown } | null)?.id === id)
}
