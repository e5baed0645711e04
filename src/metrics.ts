import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { StreamEnding } from './streaming/sse.js'
import type { BreakerState } from './upstream/breakers.js'

/**
 * Prometheus metrics, on a registry owned by one app (never prom-client's global one, so two apps
 * in one process — tests — do not share counters). Model labels are bounded: models named in the
 * config plus the first `maxModelLabels` others seen; the rest are counted as `other`.
 */

export interface Metrics {
  readonly registry: Registry
  modelLabel(model: string | undefined): string
  request(route: string, status: number, model: string | undefined): void
  attempt(model: string, outcome: string): void
  retry(model: string, reason: string): void
  retryBudgetExhausted(model: string): void
  fallback(from: string, to: string): void
  breakerState(model: string, state: BreakerState): void
  breakerEvicted(model: string): void
  streamEnding(model: string, ending: StreamEnding): void
  /** A cut or stalled stream continued on `model`: started, then succeeded, refused (4xx) or failed. */
  streamContinuation(model: string, outcome: 'started' | 'succeeded' | 'refused' | 'failed'): void
  upstreamLatency(model: string, seconds: number): void
  modelsCache(result: 'HIT' | 'MISS' | 'STALE'): void
}

/** Model ids look like `google/gemini-3.5-flash`; anything else never becomes a label value. */
const PLAUSIBLE_MODEL_ID = /^[\w.:@/-]{1,100}$/

const STATE_VALUE: Record<BreakerState, number> = { closed: 0, half_open: 1, open: 2 }

export function createMetrics(knownModels: readonly string[], maxModelLabels = 100): Metrics {
  const registry = new Registry()
  const labelled = new Set(knownModels)
  const prefix = 'toprouter_proxy_'

  const requests = new Counter({
    name: `${prefix}requests_total`,
    help: 'Requests answered, by route, status and model',
    labelNames: ['route', 'status', 'model'],
    registers: [registry],
  })
  const attempts = new Counter({
    name: `${prefix}upstream_attempts_total`,
    help: 'Upstream attempts, by model and outcome (HTTP status or failure kind)',
    labelNames: ['model', 'outcome'],
    registers: [registry],
  })
  const retries = new Counter({
    name: `${prefix}retries_total`,
    help: 'Retries scheduled, by model and reason',
    labelNames: ['model', 'reason'],
    registers: [registry],
  })
  const budgetExhausted = new Counter({
    name: `${prefix}retry_budget_exhausted_total`,
    help: 'Retries refused because the retry budget was spent',
    labelNames: ['model'],
    registers: [registry],
  })
  const fallbacks = new Counter({
    name: `${prefix}fallbacks_total`,
    help: 'Fallbacks to another model',
    labelNames: ['from', 'to'],
    registers: [registry],
  })
  const breakerGauge = new Gauge({
    name: `${prefix}breaker_state`,
    help: 'Circuit breaker state per model: 0 closed, 1 half-open, 2 open',
    labelNames: ['model'],
    registers: [registry],
  })
  const transitions = new Counter({
    name: `${prefix}breaker_transitions_total`,
    help: 'Circuit breaker state changes',
    labelNames: ['model', 'to'],
    registers: [registry],
  })
  const streamEndings = new Counter({
    name: `${prefix}stream_endings_total`,
    help: 'How streams ended: done, done_added, cut, stalled, client_gone, drained',
    labelNames: ['model', 'ending'],
    registers: [registry],
  })
  const continuations = new Counter({
    name: `${prefix}stream_continuations_total`,
    help: 'Cut or stalled streams continued on a model (streams.continuation): started, succeeded, refused (4xx), failed',
    labelNames: ['model', 'outcome'],
    registers: [registry],
  })
  const latency = new Histogram({
    name: `${prefix}upstream_latency_seconds`,
    help: 'Time from sending an attempt to its response headers (streams: to the first event)',
    labelNames: ['model'],
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [registry],
  })
  const modelsCache = new Counter({
    name: `${prefix}models_cache_total`,
    help: '/models cache results',
    labelNames: ['result'],
    registers: [registry],
  })

  function modelLabel(model: string | undefined): string {
    if (model === undefined) return 'none'
    if (labelled.has(model)) return model
    if (labelled.size < knownModels.length + maxModelLabels && PLAUSIBLE_MODEL_ID.test(model)) {
      labelled.add(model)
      return model
    }
    return 'other'
  }

  // prom-client hashes a label object on every inc(); the hot series are kept as children instead.
  const requestChildren = new Map<string, Counter.Internal>()
  const attemptChildren = new Map<string, Counter.Internal>()
  const latencyChildren = new Map<string, Histogram.Internal<string>>()

  return {
    registry,
    modelLabel,
    request(route, status, model) {
      const label = modelLabel(model)
      const key = `${route}\n${status}\n${label}`
      let child = requestChildren.get(key)
      if (child === undefined) {
        child = requests.labels(route, String(status), label)
        requestChildren.set(key, child)
      }
      child.inc()
    },
    attempt(model, outcome) {
      const label = modelLabel(model)
      const key = `${label}\n${outcome}`
      let child = attemptChildren.get(key)
      if (child === undefined) {
        child = attempts.labels(label, outcome)
        attemptChildren.set(key, child)
      }
      child.inc()
    },
    retry: (model, reason) => retries.inc({ model: modelLabel(model), reason }),
    retryBudgetExhausted: (model) => budgetExhausted.inc({ model: modelLabel(model) }),
    fallback: (from, to) => fallbacks.inc({ from: modelLabel(from), to: modelLabel(to) }),
    breakerState(model, state) {
      breakerGauge.set({ model: modelLabel(model) }, STATE_VALUE[state])
      transitions.inc({ model: modelLabel(model), to: state })
    },
    breakerEvicted: (model) => breakerGauge.remove({ model: modelLabel(model) }),
    streamEnding: (model, ending) => streamEndings.inc({ model: modelLabel(model), ending }),
    streamContinuation: (model, outcome) => continuations.inc({ model: modelLabel(model), outcome }),
    upstreamLatency(model, seconds) {
      const label = modelLabel(model)
      let child = latencyChildren.get(label)
      if (child === undefined) {
        child = latency.labels(label)
        latencyChildren.set(label, child)
      }
      child.observe(seconds)
    },
    modelsCache: (result) => modelsCache.inc({ result }),
  }
}
