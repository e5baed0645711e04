import CircuitBreaker from 'opossum'
import type { Config } from '../config.js'
import { withoutStack } from '../errors.js'
import type { Verdict } from '../failures.js'

/**
 * One opossum circuit breaker per model id (and one for `/models`), so one provider's outage never
 * blocks a healthy model. What counts as a failure is decided by `judge` (failures.ts's table); the
 * breaker never times calls out itself (`timeout: false`): every attempt carries its own signal.
 */

export type BreakerState = 'closed' | 'open' | 'half_open'

export interface BreakerEvents {
  onStateChange(key: string, from: BreakerState, to: BreakerState): void
  /** The key's breaker was dropped (idle or over the bound); its state no longer exists. */
  onEvict?(key: string): void
}

export interface BreakerRegistry {
  /** Runs `task` through the key's breaker; rejects with a `BreakerOpenError` when it is open. */
  run<T>(key: string, task: () => Promise<T>): Promise<T>
  /** Whole seconds until the key's breaker lets a probe through (at least 1). */
  retryAfterSeconds(key: string): number
  states(): Record<string, BreakerState>
  /** One key's state (closed when it has no breaker yet). */
  stateOf(key: string): BreakerState
  shutdown(): void
}

export class BreakerOpenError extends Error {
  readonly key: string
  constructor(key: string) {
    super(`circuit open for ${key}`)
    this.key = key
  }
}

interface Entry {
  readonly breaker: CircuitBreaker<[() => Promise<unknown>], unknown>
  openedAtMs: number
  lastUsedMs: number
}

const runTask = (task: () => Promise<unknown>): Promise<unknown> => task()

export interface BreakerRegistryOptions {
  readonly config: Config['breaker']
  /**
   * How an error thrown through the breaker counts: `failure` (5xx, timeouts, connection errors),
   * `not_failure` (the upstream answered), or `neutral` (the client went away: never a failure, but
   * not a success either — a half-open breaker whose probe ends this way re-opens rather than
   * closing on no evidence).
   */
  readonly judge: (error: unknown) => Verdict['breaker']
  readonly events: BreakerEvents
  /** Breakers kept at most; the least recently used closed one is shut down beyond that. */
  readonly maxBreakers?: number
  /** A closed breaker unused this long is dropped when the next new one is created. */
  readonly idleEvictMs?: number
  /** Monotonic milliseconds. */
  readonly now: () => number
}

export function createBreakerRegistry(options: BreakerRegistryOptions): BreakerRegistry {
  const { config, judge, events, now } = options
  const maxBreakers = options.maxBreakers ?? 512
  const idleEvictMs = options.idleEvictMs ?? 10 * 60 * 1000
  const entries = new Map<string, Entry>()
  const breakerOptions = {
    timeout: false as const,
    errorThresholdPercentage: config.errorThresholdPercentage,
    volumeThreshold: config.volumeThreshold,
    rollingCountTimeout: config.rollingWindowMs,
    rollingCountBuckets: 10,
    resetTimeout: config.resetTimeoutMs,
    // Percentiles sort latencies on every failure; snapshots emit on a timer. Neither is used.
    rollingPercentilesEnabled: false,
    enableSnapshots: false,
  }

  function entryFor(key: string): Entry {
    const entry = entries.get(key)
    if (entry !== undefined) {
      entry.lastUsedMs = now()
      // Map order doubles as recency order for eviction.
      entries.delete(key)
      entries.set(key, entry)
      return entry
    }
    evictIdle()
    if (entries.size >= maxBreakers) evictOne()
    const breaker: CircuitBreaker<[() => Promise<unknown>], unknown> = new CircuitBreaker(runTask, {
      ...breakerOptions,
      // opossum closes a half-open breaker on any filtered error; an abandoned probe proved nothing.
      errorFilter: (error: unknown) => {
        const verdict = judge(error)
        return verdict === 'not_failure' || (verdict === 'neutral' && !breaker.halfOpen)
      },
    })
    const created: Entry = { breaker, openedAtMs: 0, lastUsedMs: now() }
    let state: BreakerState = 'closed'
    const moveTo = (next: BreakerState) => {
      const previous = state
      state = next
      if (next === 'open') created.openedAtMs = now()
      events.onStateChange(key, previous, next)
    }
    breaker.on('open', () => moveTo('open'))
    breaker.on('halfOpen', () => moveTo('half_open'))
    breaker.on('close', () => moveTo('closed'))
    entries.set(key, created)
    return created
  }

  /** Closed breakers unused for `idleEvictMs` are shut down (their rolling-window timers stop). */
  function evictIdle(): void {
    const idleBefore = now() - idleEvictMs
    for (const [key, entry] of entries) {
      if (entry.lastUsedMs >= idleBefore) break // recency order: the rest are newer
      if (entry.breaker.closed) {
        forget(key, entry)
      }
    }
  }

  function forget(key: string, entry: Entry): void {
    entry.breaker.shutdown()
    entries.delete(key)
    events.onEvict?.(key)
  }

  function evictOne(): void {
    for (const [key, entry] of entries) {
      if (entry.breaker.closed) {
        forget(key, entry)
        return
      }
    }
    // Every breaker is open or probing: drop the oldest anyway rather than grow without bound.
    const oldest = entries.keys().next()
    if (!oldest.done) {
      const entry = entries.get(oldest.value)
      if (entry !== undefined) forget(oldest.value, entry)
    }
  }

  return {
    async run<T>(key: string, task: () => Promise<T>): Promise<T> {
      const entry = entryFor(key)
      try {
        return (await entry.breaker.fire(task)) as T
      } catch (error: unknown) {
        if ((error as { code?: unknown }).code === 'EOPENBREAKER') throw withoutStack(() => new BreakerOpenError(key))
        throw error
      }
    },
    retryAfterSeconds(key) {
      const entry = entries.get(key)
      if (entry === undefined) return 1
      const remainingMs = entry.openedAtMs + config.resetTimeoutMs - now()
      return Math.max(1, Math.ceil(remainingMs / 1000))
    },
    states() {
      const states: Record<string, BreakerState> = {}
      for (const [key, entry] of entries) states[key] = stateOfBreaker(entry.breaker)
      return states
    },
    stateOf(key) {
      const entry = entries.get(key)
      return entry === undefined ? 'closed' : stateOfBreaker(entry.breaker)
    },
    shutdown() {
      for (const entry of entries.values()) entry.breaker.shutdown()
      entries.clear()
    },
  }
}

function stateOfBreaker(breaker: { readonly opened: boolean; readonly halfOpen: boolean }): BreakerState {
  return breaker.opened ? 'open' : breaker.halfOpen ? 'half_open' : 'closed'
}
