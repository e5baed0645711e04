import type { FastifyInstance } from 'fastify'
import { proxyError } from '../errors.js'
import type { Forwarder } from '../forward.js'

/** `POST /chat/completions` (and `/v1/…`) → `{baseUrl}/chat/completions`, streaming or not. */

export interface ChatRequest {
  readonly model: string
  readonly stream: boolean
  /** The client's bytes, forwarded as they are unless the proxy must change a field. */
  readonly body: Buffer
  readonly parsed: Readonly<Record<string, unknown>>
  /** The request's own fallback models (the LiteLLM/Bifrost `fallbacks` field), stripped upstream. */
  readonly fallbacks: readonly string[]
  readonly hasFallbacksField: boolean
}

const NO_FALLBACKS: readonly string[] = Object.freeze([])

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
  const { model, stream, fallbacks } = parsed as { model?: unknown; stream?: unknown; fallbacks?: unknown }
  if (typeof model !== 'string' || model.trim() === '') {
    throw proxyError('invalid_request', '`model` is required and must be a non-empty string')
  }
  if (stream !== undefined && stream !== null && typeof stream !== 'boolean') {
    throw proxyError('invalid_request', '`stream` must be a boolean')
  }
  const hasFallbacksField = fallbacks !== undefined
  if (hasFallbacksField && !(Array.isArray(fallbacks) && fallbacks.length <= 10 && fallbacks.every((m) => typeof m === 'string' && m.trim() !== ''))) {
    throw proxyError('invalid_request', '`fallbacks` must be a list of at most 10 model ids')
  }
  return {
    model,
    stream: stream === true,
    body,
    parsed: parsed as Record<string, unknown>,
    fallbacks: hasFallbacksField ? (fallbacks as string[]) : NO_FALLBACKS,
    hasFallbacksField,
  }
}

export function registerChatCompletionsRoutes(app: FastifyInstance, forwarder: Forwarder): void {
  for (const url of ['/chat/completions', '/v1/chat/completions']) {
    app.post(url, (request, reply) => {
      return forwarder.chat(request, reply, parseChatRequest(request.body))
    })
  }
}
