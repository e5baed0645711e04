import type { ServerResponse } from 'node:http'
import type { ChatRequest } from '../chat/chat-request.js'
import type { Config } from '../config.js'
import type { Failure } from '../failures.js'
import type { HeaderMap } from '../http-headers.js'
import type { EventLog } from '../logging.js'
import type { Metrics } from '../metrics.js'
import { modelMatcher } from '../model-glob.js'
import { RequestClock } from '../request-clock.js'
import type { ChunkTap } from '../streaming/sse.js'
import type { ServedStream, UpstreamTrace } from '../upstream/attempt.js'
import type { Retrier } from '../upstream/retrier.js'
import { StreamTextTap } from './stream-text.js'

/**
 * Stream continuation (`streams.continuation`, opt-in): a stream cut or stalled after its first
 * event, while all it sent is plain text, is continued instead of ended. The next model of the
 * chain whose id matches `prefillModels` (the same model when none is left) gets the same request
 * with one more message, `{"role":"assistant","content": <the text the client has>}`, through the
 * retrier like any attempt; its stream is relayed from its first event on, its role chunk dropped.
 * No continuation when the stream is not plain text, `maxContinuations` are spent, the deadline
 * has passed or the client has gone; a continuation refused (4xx: a model that rejects prefill) or
 * failed ends the stream with the error event, as without continuation.
 */

export interface StreamContinuerDeps {
  readonly config: Config['streams']['continuation']
  readonly retrier: Retrier
  readonly metrics: Metrics
  readonly now: () => number
  /** Where a continuation's clock is listed while it waits, so a drain ends it (Lifecycle.waiting). */
  readonly inFlight: Set<RequestClock>
}

/** The committed stream's request, as the continuation needs it. */
export interface ContinuableStream {
  /** What the upstream was sent (in team mode with `include_usage` asked for). */
  readonly chat: ChatRequest
  /** The request's model chain, in order (modelChain). */
  readonly chain: readonly string[]
  /** The model whose stream is being relayed. */
  readonly model: string
  readonly path: string
  readonly headers: HeaderMap
  /** The request's deadline (monotonic ms): a continuation starts only before it. */
  readonly deadlineAtMs: number
  /** The client's response: a continuation is abandoned when it closes. */
  readonly response: ServerResponse
  readonly trace: UpstreamTrace
  readonly log: EventLog
  /** Team mode's usage tap, which sees the bytes before the text tap. */
  readonly innerTap: ChunkTap | undefined
}

export interface StreamContinuation {
  /** Passes the stream's bytes (all parts) and keeps the text the client has. */
  readonly tap: StreamTextTap
  /** After a cut or a stall: the next part, its first event read; undefined → the error event. */
  resume(cut: Failure): Promise<ServedStream | undefined>
}

export interface StreamContinuer {
  forStream(stream: ContinuableStream): StreamContinuation
}

export function createStreamContinuer(deps: StreamContinuerDeps): StreamContinuer {
  const { config, retrier, metrics, now } = deps
  const mayPrefill = modelMatcher(config.prefillModels)

  return {
    forStream(stream) {
      const tap = new StreamTextTap(stream.innerTap)
      let model = stream.model
      let continued = 0

      /** Why this cut is not continued, or undefined when it is. */
      function reasonNotTo(): string | undefined {
        if (!tap.plainText) return 'the stream is not plain text'
        if (continued >= config.maxContinuations) return `streams.continuation.maxContinuations (${config.maxContinuations}) reached`
        if (stream.response.destroyed || stream.response.writableEnded) return 'the client has gone'
        if (stream.deadlineAtMs - now() <= 0) return 'the request deadline has passed'
        return undefined
      }

      return {
        tap,
        async resume(cut) {
          const reason = reasonNotTo()
          const next = reason === undefined ? nextPrefillModel(stream.chain, model, mayPrefill) : undefined
          if (next === undefined) {
            stream.log.warn(
              { model, code: cut.code, reason: reason ?? 'no model of the chain matches prefillModels' },
              'stream not continued',
            )
            return undefined
          }
          continued++
          metrics.streamContinuation(next, 'started')
          stream.log.info({ from: model, to: next, code: cut.code, forwardedChars: tap.text.length }, 'continuing a cut stream')
          const body = prefillBody(stream.chat, next, tap.text)
          stream.headers['content-length'] = String(body.length)
          const clock = new RequestClock({
            deadlineMs: stream.deadlineAtMs - now(),
            nowMs: now(),
            clientRetryCount: 0,
            response: stream.response,
            inFlight: deps.inFlight,
          })
          const outcome = await retrier.run({
            key: next,
            spec: { method: 'POST', path: stream.path, headers: stream.headers, body, stream: true },
            clock,
            trace: stream.trace,
            log: stream.log,
            hasNextModel: false,
          })
          clock.release()
          stream.trace.attempts += clock.attempts
          if (!outcome.ok) {
            const refused = outcome.failure.upstreamStatus !== undefined && outcome.failure.upstreamStatus < 500
            metrics.streamContinuation(next, refused ? 'refused' : 'failed')
            stream.log.warn(
              { model: next, code: outcome.failure.code, status: outcome.failure.upstreamStatus },
              'stream continuation failed',
            )
            return undefined
          }
          if (outcome.served.firstChunks === undefined) {
            // A JSON answer to the streaming request: nothing that can follow the events already sent.
            metrics.streamContinuation(next, 'failed')
            stream.log.warn(
              { model: next, status: outcome.served.response.statusCode },
              'stream continuation failed: the answer is not a stream',
            )
            return undefined
          }
          metrics.streamContinuation(next, 'succeeded')
          tap.startContinuation()
          model = next
          stream.trace.servedBy = next
          return outcome.served
        },
      }
    },
  }
}

/** The next model after `current` that may continue a stream, else `current` itself if it may. */
export function nextPrefillModel(chain: readonly string[], current: string, mayPrefill: (model: string) => boolean): string | undefined {
  const after = chain.slice(chain.indexOf(current) + 1)
  return after.find(mayPrefill) ?? (mayPrefill(current) ? current : undefined)
}

/** The request for `model` with the text so far as an assistant message to continue from. */
export function prefillBody(chat: ChatRequest, model: string, text: string): Buffer {
  // From the parsed request (as the upstream got it): the request-level `fallbacks` stays out.
  const { fallbacks: _stripped, ...fields } = chat.parsed
  const messages = Array.isArray(fields.messages) ? fields.messages : []
  return Buffer.from(JSON.stringify({ ...fields, model, messages: [...messages, { role: 'assistant', content: text }] }))
}
