import type { Metrics } from '../metrics.js'
import type { BreakerState } from '../upstream/breakers.js'
import { RollingWindow, type WindowOptions, type WindowSnapshot } from './rolling-window.js'

/**
 * What the status page shows, kept in memory and bounded: a rolling window per model (models
 * labelled as metrics labels them: the configured ones, the first 100 others, then `other`), the
 * last errors (time, model, status, code — never a message, a key or a body), and in team mode
 * each key's requests and tokens for the current UTC day, by key name (the first 200 names, then
 * `other`). Every record is O(1); nothing here is read on the request path.
 */

export interface RequestEnd {
  /** The route's URL pattern, or `unmatched`. */
  readonly route: string
  /** The model asked for (the request's trace), undefined before one was known. */
  readonly model: string | undefined
  readonly status: number
  /** The error shape's code, when the proxy answered with one. */
  readonly code: string | undefined
  /** How a relayed stream ended (`cut`, `stalled`, …), when it was one. */
  readonly ending: string | undefined
  readonly durationMs: number
  /** Streams: the served attempt's time to its first event. */
  readonly ttftMs: number | undefined
}

export interface StatusError {
  readonly time: string
  readonly model: string | null
  readonly status: number
  readonly code: string
}

export interface KeyToday {
  readonly name: string
  readonly requests: number
  readonly promptTokens: number
  readonly completionTokens: number
}

export interface StatusSnapshot {
  readonly time: string
  readonly bucketSeconds: number
  readonly windowSeconds: number
  readonly models: Array<{ readonly model: string; readonly breaker: BreakerState | null } & WindowSnapshot>
  readonly lastErrors: StatusError[]
  /** Team mode only. */
  readonly keysToday?: { readonly day: string; readonly keys: KeyToday[] }
}

export interface StatusRecorder {
  requestEnded(end: RequestEnd): void
  retry(model: string): void
  fallback(from: string): void
  keyRequest(keyName: string, tokens: { prompt: number | null; completion: number | null }): void
  snapshot(breakerStates: Readonly<Record<string, BreakerState>>): StatusSnapshot
}

export interface StatusRecorderOptions {
  /** The model label of metrics.ts: bounds the models kept. */
  readonly modelLabel: (model: string | undefined) => string
  /** Wall-clock milliseconds. */
  readonly now: () => number
  readonly team: boolean
  /** The row of the `/models` routes (their breaker's key); their requests carry no model. */
  readonly modelsRow?: string
  readonly window?: WindowOptions
  /** @default 20 */
  readonly maxErrors?: number
  /** @default 200 */
  readonly maxKeyNames?: number
}

/** A stream that ended in an error event, and the code that event carried (failures.ts). */
const STREAM_ERROR_CODES: Readonly<Record<string, string>> = {
  cut: 'stream_interrupted',
  stalled: 'upstream_timeout',
  drained: 'service_unavailable',
}
/** A client that left is not a model's error: counted as a request, not listed. */
const CLIENT_CLOSED = 499
const DAY_MS = 86_400_000
const MODELS_ROUTES = new Set(['/models', '/v1/models', '/models/*', '/v1/models/*'])
/** Not shown: requests for no route (scanners) and the status page's own polls. */
const UNSHOWN_ROUTES = new Set(['unmatched', '/status', '/status.json'])

export function createStatusRecorder(options: StatusRecorderOptions): StatusRecorder {
  const { modelLabel, now } = options
  const maxErrors = options.maxErrors ?? 20
  const maxKeyNames = options.maxKeyNames ?? 200
  const windows = new Map<string, RollingWindow>()
  const errors: Array<StatusError | undefined> = new Array(maxErrors)
  let errorsWritten = 0
  let day = ''
  let dayStartMs = Number.NEGATIVE_INFINITY
  const keys = new Map<string, { requests: number; promptTokens: number; completionTokens: number }>()

  function windowOf(model: string): RollingWindow {
    const label = modelLabel(model)
    let window = windows.get(label)
    if (window === undefined) {
      window = new RollingWindow(options.window)
      windows.set(label, window)
    }
    return window
  }

  return {
    requestEnded(end) {
      if (UNSHOWN_ROUTES.has(end.route)) return
      const time = now()
      const model = end.model ?? (MODELS_ROUTES.has(end.route) ? options.modelsRow : undefined)
      const streamCode = end.ending === undefined ? undefined : STREAM_ERROR_CODES[end.ending]
      const failed = (end.status >= 400 && end.status !== CLIENT_CLOSED) || streamCode !== undefined
      if (model !== undefined) windowOf(model).request(time, failed, end.durationMs, end.ttftMs)
      if (!failed) return
      errors[errorsWritten % maxErrors] = {
        time: new Date(time).toISOString(),
        model: model === undefined ? null : modelLabel(model),
        status: end.status,
        code: (end.status < 400 ? streamCode : end.code) ?? `http_${end.status}`,
      }
      errorsWritten++
    },
    retry: (model) => windowOf(model).count('retries', now()),
    fallback: (from) => windowOf(from).count('fallbacks', now()),
    keyRequest(keyName, tokens) {
      const time = now()
      // The day's bounds are computed once a day, not per request (toISOString costs ~1 µs).
      if (time < dayStartMs || time >= dayStartMs + DAY_MS) {
        dayStartMs = time - (time % DAY_MS)
        day = new Date(dayStartMs).toISOString().slice(0, 10)
        keys.clear()
      }
      const name = keys.has(keyName) || keys.size < maxKeyNames ? keyName : 'other'
      let entry = keys.get(name)
      if (entry === undefined) {
        entry = { requests: 0, promptTokens: 0, completionTokens: 0 }
        keys.set(name, entry)
      }
      entry.requests++
      entry.promptTokens += tokens.prompt ?? 0
      entry.completionTokens += tokens.completion ?? 0
    },
    snapshot(breakerStates) {
      const time = now()
      const names = new Set([...Object.keys(breakerStates).map((model) => modelLabel(model)), ...windows.keys()])
      const models = [...names].sort().map((model) => ({ model, breaker: breakerStates[model] ?? null, ...windowOf(model).snapshot(time) }))
      const lastErrors: StatusError[] = []
      for (let i = errorsWritten - 1; i >= Math.max(0, errorsWritten - maxErrors); i--) {
        const error = errors[i % maxErrors]
        if (error !== undefined) lastErrors.push(error)
      }
      const window = windows.values().next().value ?? new RollingWindow(options.window)
      const snapshot: StatusSnapshot = {
        time: new Date(time).toISOString(),
        bucketSeconds: window.bucketMs / 1000,
        windowSeconds: (window.bucketMs * window.buckets) / 1000,
        models,
        lastErrors,
      }
      if (!options.team) return snapshot
      const today = new Date(time).toISOString().slice(0, 10)
      const keysToday = today === day ? [...keys].map(([name, entry]) => ({ name, ...entry })).sort((a, b) => b.requests - a.requests) : []
      return { ...snapshot, keysToday: { day: today, keys: keysToday } }
    },
  }
}

/**
 * The app's metrics with the status recorder on the side: retries and fallbacks reach both, every
 * other call goes to metrics alone (the request's end reaches the recorder from request-log.ts).
 */
export function withStatusRecorder(metrics: Metrics, recorder: StatusRecorder): Metrics {
  return {
    ...metrics,
    retry(model, reason) {
      metrics.retry(model, reason)
      recorder.retry(model)
    },
    fallback(from, to) {
      metrics.fallback(from, to)
      recorder.fallback(from)
    },
  }
}
