import type { RouteHandlerMethod } from 'fastify'
import type { Logger } from 'pino'
import { createFallbackChain } from './chat/fallback-chain.js'
import type { Config } from './config.js'
import { createStreamContinuer } from './continuation/continuation.js'
import { breakerVerdict } from './failures.js'
import type { Lifecycle } from './lifecycle.js'
import type { Metrics } from './metrics.js'
import { createModelsCache, type ModelsCache } from './models-cache.js'
import { createChatCompletionsHandler } from './routes/chat-completions.js'
import { createModelsHandlers } from './routes/models.js'
import type { TeamMode } from './team/team-mode.js'
import type { RequestTracer } from './tracing/request-tracer.js'
import { createAttempter } from './upstream/attempt.js'
import { type BreakerEvents, type BreakerRegistry, createBreakerRegistry } from './upstream/breakers.js'
import type { UpstreamClient } from './upstream/client.js'
import { NO_MODEL_PAUSES } from './upstream/model-pauses.js'
import { createRetrier } from './upstream/retrier.js'
import { createRetryBudget, type RetryBudget } from './upstream/retry-budget.js'
import { createUpstreamAuth } from './upstream-auth.js'

/**
 * The per-request half of the app, built from one Config: the request handlers and the policy
 * parts they use (fallbacks, retry policy, timeouts, continuation, models cache). It is immutable;
 * a reload builds a new one and the app swaps its reference, so a request that started keeps the
 * snapshot it started with. What carries state across a reload is handed over from the previous
 * snapshot when its settings did not change: the breakers (their open/closed state), the retry
 * budget's window and the models cache.
 */

export interface Runtime {
  readonly config: Config
  readonly chat: RouteHandlerMethod
  readonly modelsList: RouteHandlerMethod
  readonly modelsOne: RouteHandlerMethod
  readonly breakers: BreakerRegistry
  readonly modelsBreakers: BreakerRegistry
  readonly budget: RetryBudget
  readonly cache: ModelsCache
}

/** What every snapshot shares: built once by buildApp, never rebuilt by a reload. */
export interface RuntimeParts {
  readonly logger: Logger
  readonly upstream: UpstreamClient
  readonly lifecycle: Lifecycle
  readonly metrics: Metrics
  readonly team: TeamMode | undefined
  readonly now: () => number
  readonly random: () => number
  readonly wallClockNow: () => number
  readonly tracer: RequestTracer
}

export function buildRuntime(config: Config, parts: RuntimeParts, previous?: Runtime): Runtime {
  const { logger, upstream, lifecycle, metrics, team, now, random, wallClockNow, tracer } = parts
  const keepBreakers = previous !== undefined && sameJson(previous.config.breaker, config.breaker)
  let breakers: BreakerRegistry
  let modelsBreakers: BreakerRegistry
  if (keepBreakers) {
    breakers = previous.breakers
    modelsBreakers = previous.modelsBreakers
  } else {
    const breakerEvents: BreakerEvents = {
      onStateChange(model, from, to) {
        metrics.breakerState(model, to)
        logger.warn({ model, from, to, resetTimeoutMs: config.breaker.resetTimeoutMs }, `circuit breaker ${from} -> ${to}`)
      },
      onEvict: (model) => metrics.breakerEvicted(model),
    }
    breakers = createBreakerRegistry({ config: config.breaker, judge: breakerVerdict, events: breakerEvents, now })
    modelsBreakers = createBreakerRegistry({ config: config.breaker, judge: breakerVerdict, events: breakerEvents, maxBreakers: 1, now })
  }
  const keepBudget =
    previous !== undefined &&
    previous.config.retry.budgetPercent === config.retry.budgetPercent &&
    previous.config.retry.budgetMinPerSecond === config.retry.budgetMinPerSecond
  const budget = keepBudget ? previous.budget : createRetryBudget(config.retry, now)
  const cache =
    previous !== undefined && sameJson(previous.config.models, config.models)
      ? previous.cache
      : createModelsCache({ ttlMs: config.models.cacheTtlMs, staleIfErrorMs: config.models.staleIfErrorMs, now })

  const attempter = createAttempter({ upstream, timeouts: config.upstream, secret: config.apiKey, now, wallClockNow })
  const retrierDeps = { retry: config.retry, budget, attempter, metrics, random, now }
  // A fleet (team mode with Redis) shares a 429's pushback: the model is paused on every replica.
  // One proxy on its own keeps round 1's behaviour: each request retries within its own pushback.
  const pauses = team?.modelPauses ?? NO_MODEL_PAUSES
  const chatRetrier = createRetrier({ ...retrierDeps, breakers, pauses, wallClockNow })
  const chain = createFallbackChain({ retrier: chatRetrier, fallbacks: config.fallbacks, metrics })
  const continuer = config.streams.continuation.enabled
    ? createStreamContinuer({ config: config.streams.continuation, retrier: chatRetrier, metrics, now, inFlight: lifecycle.waiting })
    : undefined
  const auth = createUpstreamAuth(config.apiKey)
  const routeDeps = { auth, budget, lifecycle, metrics, config, now, tracer }

  const chat = createChatCompletionsHandler({ ...routeDeps, chain, team: team?.gateway, continuer })
  const models = createModelsHandlers({
    ...routeDeps,
    team: team?.gateway,
    retrier: createRetrier({ ...retrierDeps, breakers: modelsBreakers }),
    cache,
  })
  return { config, chat, modelsList: models.list, modelsOne: models.one, breakers, modelsBreakers, budget, cache }
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b)
}
