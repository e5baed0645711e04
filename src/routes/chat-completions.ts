import type { FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify'
import { modelChain, parseChatRequest, withBody } from '../chat/chat-request.js'
import type { ChainOutcome, FallbackChain } from '../chat/fallback-chain.js'
import type { StreamContinuer } from '../continuation/continuation.js'
import type { Failure } from '../failures.js'
import type { Metrics } from '../metrics.js'
import { commit } from '../reply/commit.js'
import { sendError } from '../reply/render-error.js'
import type { RelayedStream } from '../streaming/sse.js'
import type { TeamGateway } from '../team/gateway.js'
import { querySuffix } from './table.js'
import { finishUpstreamRequest, startUpstreamRequest, type UpstreamRouteDeps } from './upstream-request.js'

/**
 * `POST /chat/completions` (and `/v1/…`), in the order a request lives it: in team mode the
 * member's key first; parse; the key's allow-list; authorise upstream and start the clock; the
 * key's budget and limits; run the fallback chain within the clock; then commit what was served
 * or render the failure. The request log finishes the member's side (its usage record).
 */

export interface ChatRouteDeps extends UpstreamRouteDeps {
  readonly chain: FallbackChain
  /** Team mode's gateway; undefined in the local and sidecar modes. */
  readonly team: TeamGateway | undefined
  /** With `streams.continuation.enabled`: continues a stream cut after its commit. */
  readonly continuer: StreamContinuer | undefined
}

export function createChatCompletionsHandler(deps: ChatRouteDeps): RouteHandlerMethod {
  const { chain, lifecycle, metrics, config, team, continuer } = deps

  return async function chatCompletions(request: FastifyRequest, reply: FastifyReply) {
    const member = team?.begin(request.id, request.receivedAtMs)
    if (member !== undefined) {
      request.teamRequest = member
      const lookingUp = member.authenticate(request.headers.authorization)
      if (lookingUp !== undefined) await lookingUp
    }
    let chat = parseChatRequest(request.body)
    if (member !== undefined) {
      member.allowModel(chat.model, chat.stream)
      const changed = member.upstreamBody(chat)
      if (changed !== undefined) chat = withBody(chat, changed)
    }
    const started = startUpstreamRequest(deps, request, { model: chat.model, hasBody: true, followClient: reply.raw })
    const { headers, clock, trace } = started
    const path = `/chat/completions${querySuffix(request.url)}`
    let outcome: ChainOutcome
    try {
      if (member !== undefined) await member.admit(chat, clock.signal, clock.deadlineAtMs)
      outcome = await chain.run({
        chat,
        path,
        headers,
        clock,
        trace,
        log: request.log,
        allows: member?.allows,
      })
    } finally {
      finishUpstreamRequest(started)
    }
    const rateLimitHeaders = member?.rateLimitHeaders
    if (!outcome.ok) return sendFailure(reply, outcome.failure, clock.attempts, rateLimitHeaders)

    trace.servedBy = outcome.model
    trace.span.served(outcome.model, outcome.served.body, outcome.served.firstChunks)
    const streamed = outcome.served.firstChunks !== undefined
    if (member !== undefined && !streamed) member.answered(outcome.served.body)
    const usageTap = member !== undefined && streamed ? member.streamTap() : undefined
    const continuation =
      continuer !== undefined && streamed
        ? continuer.forStream({
            chat,
            chain: modelChain(chat, config.fallbacks, member?.allows),
            model: outcome.model,
            path,
            headers,
            deadlineAtMs: clock.deadlineAtMs,
            response: reply.raw,
            trace,
            log: request.log,
            innerTap: usageTap,
          })
        : undefined
    const stream = commit(reply, outcome.served, {
      model: outcome.model,
      attempts: clock.attempts,
      secret: config.apiKey,
      streamIdleTimeoutMs: config.upstream.streamIdleTimeoutMs,
      rateLimitHeaders,
      tap: streamed ? trace.span.streamTap(continuation?.tap ?? usageTap) : undefined,
      resume: continuation?.resume,
    })
    if (stream !== undefined) {
      request.relayedStream = stream
      lifecycle.trackStream(stream)
      void recordStreamEnding(stream, outcome.model, metrics, request)
    }
    return reply
  }
}

/** Renders a failure, with the attempts it took; for a client that left, only the log sees it. */
export function sendFailure(
  reply: FastifyReply,
  failed: Failure,
  attempts: number,
  rateLimitHeaders?: Readonly<Record<string, string>>,
): FastifyReply {
  reply.header('x-proxy-attempts', String(attempts))
  return sendError(reply, failed, rateLimitHeaders)
}

async function recordStreamEnding(stream: RelayedStream, model: string, metrics: Metrics, request: FastifyRequest): Promise<void> {
  const ending = await stream.ended
  metrics.streamEnding(model, ending)
  if (ending === 'cut' || ending === 'stalled' || ending === 'drained')
    request.log.warn({ model, ending }, 'stream ended with an error event')
}
