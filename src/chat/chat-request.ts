import type { Config } from '../config.js'
import { proxyError } from '../errors.js'

/**
 * A chat request as the proxy needs it: parsed once to validate it and to read `model`, `stream`
 * and the request's own `fallbacks`; forwarded as the client's own bytes unless a field changes.
 */

export interface ChatRequest {
  readonly model: string
  readonly stream: boolean
  /** What the primary model is sent: the client's own bytes, or without `fallbacks` when it had one. */
  readonly body: Buffer
  readonly parsed: Readonly<Record<string, unknown>>
  /** The request's own fallback models (the LiteLLM/Bifrost `fallbacks` field), stripped upstream. */
  readonly fallbacks: readonly string[]
  readonly hasFallbacksField: boolean
}

const NO_FALLBACKS: readonly string[] = Object.freeze([])
const MAX_REQUEST_FALLBACKS = 10

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
  if (hasFallbacksField && !isModelList(fallbacks)) {
    throw proxyError('invalid_request', `\`fallbacks\` must be a list of at most ${MAX_REQUEST_FALLBACKS} model ids`)
  }
  const fields = parsed as Record<string, unknown>
  return {
    model,
    stream: stream === true,
    // Rewritten now, so a body that cannot be rewritten is refused before anything is sent.
    body: hasFallbacksField ? rewritten(fields, model) : body,
    parsed: fields,
    fallbacks: hasFallbacksField ? fallbacks : NO_FALLBACKS,
    hasFallbacksField,
  }
}

function isModelList(value: unknown): value is string[] {
  return Array.isArray(value) && value.length <= MAX_REQUEST_FALLBACKS && value.every((m) => typeof m === 'string' && m.trim() !== '')
}

/**
 * The primary model, then the request's own `fallbacks`, then the configured ones; no repeats,
 * and only those `allows` lets through (the primary is checked before the chain runs).
 */
export function modelChain(chat: ChatRequest, configured: Config['fallbacks'], allows?: (model: string) => boolean): string[] {
  const chain = [chat.model]
  for (const model of [...chat.fallbacks, ...(configured[chat.model] ?? [])]) {
    if (!chain.includes(model) && (allows === undefined || allows(model))) chain.push(model)
  }
  return chain
}

/** The same request with other bytes and fields for the primary (team mode asks a stream for its usage). */
export function withBody(
  chat: ChatRequest,
  changed: { readonly body: Buffer; readonly parsed: Readonly<Record<string, unknown>> },
): ChatRequest {
  return { ...chat, body: changed.body, parsed: changed.parsed }
}

/** The primary's body for the primary; for another model, the body with `model` set and `fallbacks` stripped. */
export function bodyFor(chat: ChatRequest, model: string): Buffer {
  return model === chat.model ? chat.body : rewritten(chat.parsed, model)
}

function rewritten(fields: Readonly<Record<string, unknown>>, model: string): Buffer {
  const { fallbacks: _stripped, ...rest } = fields
  try {
    return Buffer.from(JSON.stringify({ ...rest, model }))
  } catch (error: unknown) {
    // JSON.parse takes nesting (thousands of levels) that JSON.stringify's recursion cannot write back.
    if (error instanceof RangeError) throw proxyError('invalid_request', 'Request body is nested too deeply to rewrite')
    throw error
  }
}
