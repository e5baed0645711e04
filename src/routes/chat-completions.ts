import type { FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify'
import { parseChatRequest } from '../chat/chat-request.js'
import type { ChainOutcome, FallbackChain } from '../chat/fallback-chain.js'
import type { Failure } from '../failures.js'
import type { Metrics } from '../metrics.js'
import { commit } from '../reply/commit.js'
import { sendError } from '../reply/render-error.js'
import type { RelayedStream } from '../streaming/sse.js'
import { querySuffix } from './table.js'
import { finishUpstreamRequest, startUpstreamRequest, type UpstreamRouteDeps } from './upstream-request.js'

/**
 * `POST /chat/completions` (and `/v1/…`), in the order a request lives it: parse, authorise, run
 * the fallback chain within the request's clock, then commit what was served or render the
 * failure. A member key's check and limits belong right after the parse, before the chain.
 */

export interface ChatRouteDeps extends UpstreamRouteDeps {
  readonly chain: FallbackChain
}

export function createChatCompletionsHandler(deps: ChatRouteDeps): RouteHandlerMethod {
  const { chain, lifecycle, metrics, config } = deps

  return async function chatCompletions(request: FastifyRequest, reply: FastifyReply) {
    const chat = parseChatRequest(request.body)
    const started = startUpstreamRequest(deps, request, { model: chat.model, hasBody: true, followClient: reply.raw })
    const { headers, clock, trace } = started
    let outcome: ChainOutcome
    try {
      outcome = await chain.run({ chat, path: `/chat/completions${querySuffix(request.url)}`, headers, clock, trace, log: request.log })
    } finally {
      finishUpstreamRequest(started)
    }
    if (!outcome.ok) return sendFailure(reply, outcome.failure, clock.attempts)

    trace.servedBy = outcome.model
    const stream = commit(reply, outcome.served, {
      model: outcome.model,
      attempts: clock.attempts,
      secret: config.apiKey,
      streamIdleTimeoutMs: config.upstream.streamIdleTimeoutMs,
    })
    if (stream !== undefined) {
      lifecycle.trackStream(stream)
      void recordStreamEnding(stream, outcome.model, metrics, request)
    }
    return reply
  }
}

/** Renders a failure, with the attempts it took; for a client that left, only the log sees it. */
export function sendFailure(reply: FastifyReply, failed: Failure, attempts: number): FastifyReply {
  reply.header('x-proxy-attempts', String(attempts))
  return sendError(reply, failed)
}

async function recordStreamEnding(stream: RelayedStream, model: string, metrics: Metrics, request: FastifyRequest): Promise<void> {
  const ending = await stream.ended
  metrics.streamEnding(model, ending)
  if (ending === 'cut' || ending === 'stalled' || ending === 'drained')
    request.log.warn({ model, ending }, 'stream ended with an error event')
}
