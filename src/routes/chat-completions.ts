import type { FastifyInstance } from 'fastify'
import { proxyError } from '../errors.js'
import type { Forwarder } from '../forward.js'

/** `POST /chat/completions` (and `/v1/…`) → `{baseUrl}/chat/completions`, streaming or not. */

export interface ChatRequest {
  readonly model: string
  readonly stream: boolean
  /** The client's bytes, forwarded as they are unless the proxy must change a field. */
  readonly body: Buffer
}

export function parseChatRequest(body: unknown): ChatRequest {
  if (!Buffer.isBuffer(body) || body.length === 0) {
    throw proxyError('invalid_json', 'Request body is empty; expected a JSON object')
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(body.toString('utf8'))
  } catch (err: unknown) {
    throw proxyError('invalid_json', `Request body is not valid JSON: ${(err as Error).message}`)
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw proxyError('invalid_request', 'Request body must be a JSON object')
  }
  const { model, stream } = parsed as { model?: unknown; stream?: unknown }
  if (typeof model !== 'string' || model.trim() === '') {
    throw proxyError('invalid_request', '`model` is required and must be a non-empty string')
  }
  if (stream !== undefined && stream !== null && typeof stream !== 'boolean') {
    throw proxyError('invalid_request', '`stream` must be a boolean')
  }
  return { model, stream: stream === true, body }
}

export function registerChatCompletionsRoutes(app: FastifyInstance, forwarder: Forwarder): void {
  for (const url of ['/chat/completions', '/v1/chat/completions']) {
    app.post(url, (request, reply) => {
      const chat = parseChatRequest(request.body)
      return forwarder.forward(request, reply, {
        method: 'POST',
        path: '/chat/completions',
        body: chat.body,
        stream: chat.stream,
        model: chat.model,
      })
    })
  }
}
