import type { Config } from '../config.js'
import type { Failure } from '../failures.js'
import type { HeaderMap } from '../http-headers.js'
import type { EventLog } from '../logging.js'
import type { Metrics } from '../metrics.js'
import type { RequestClock } from '../request-clock.js'
import type { Served, UpstreamTrace } from '../upstream/attempt.js'
import type { Retrier } from '../upstream/retrier.js'
import { bodyFor, type ChatRequest, modelChain } from './chat-request.js'

/**
 * The fallback chain: the primary model, then each fallback, each through the retrier, until one
 * serves or a failure says to stop (failures.ts: `nextModel`). It knows nothing of HTTP servers;
 * it gets a parsed request and gives back an outcome.
 */

export interface ChainRun {
  readonly chat: ChatRequest
  /** `/chat/completions` plus the client's query string. */
  readonly path: string
  /** The upstream request headers; `content-length` is set here per model body. */
  readonly headers: HeaderMap
  readonly clock: RequestClock
  readonly trace: UpstreamTrace
  readonly log: EventLog
  /** Team mode: a fallback the member's key may not use is skipped, never called. */
  readonly allows?: ((model: string) => boolean) | undefined
}

export type ChainOutcome =
  | { readonly ok: true; readonly served: Served; readonly model: string }
  | { readonly ok: false; readonly failure: Failure }

export interface FallbackChain {
  run(run: ChainRun): Promise<ChainOutcome>
}

export interface FallbackChainDeps {
  readonly retrier: Retrier
  readonly fallbacks: Config['fallbacks']
  readonly metrics: Metrics
}

export function createFallbackChain(deps: FallbackChainDeps): FallbackChain {
  const { retrier, metrics } = deps
  return {
    async run({ chat, path, headers, clock, trace, log, allows }) {
      const chain = modelChain(chat, deps.fallbacks, allows)
      let model = chat.model
      for (let index = 0; ; index++) {
        const body = bodyFor(chat, model)
        headers['content-length'] = String(body.length)
        const outcome = await retrier.run({
          key: model,
          spec: { method: 'POST', path, headers, body, stream: chat.stream },
          clock,
          trace,
          log,
          hasNextModel: index < chain.length - 1,
        })
        if (outcome.ok) return { ok: true, served: outcome.served, model }
        const next = chain[index + 1]
        if (next === undefined || outcome.failure.verdict.nextModel === 'never') return outcome
        metrics.fallback(model, next)
        trace.span.fallback(model, next)
        log.warn({ from: model, to: next, code: outcome.failure.code }, 'falling back to the next model')
        model = next
      }
    },
  }
}
