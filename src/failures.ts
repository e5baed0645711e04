import { ERROR_REGISTRY, type ErrorCode, ProxyError, withoutStack } from './errors.js'

/**
 * What every failure means, in one table. Whatever went wrong — an undici error, an upstream
 * status, a stream that ended badly, an open breaker, the deadline, the client leaving — becomes a
 * `Failure`: the error the client sees, plus a verdict that every layer reads instead of deciding
 * for itself:
 *
 * - `retry`: worth another attempt on the same model (the retry policy still decides: attempts
 *   left, pushback, deadline, budget);
 * - `breaker`: `failure` counts against the model's breaker; `not_failure` counts as a success (the
 *   upstream answered, e.g. a 4xx); `neutral` proves nothing either way (a half-open probe that
 *   ends so re-opens the breaker rather than closing it on no evidence);
 * - `nextModel`: `at_once` moves on to the next model without retrying, when there is one (with no
 *   model left, `retry` applies); `after_retries` moves on once the retries are spent; `never`
 *   ends the chain with this error.
 *
 * test/failures.test.ts pins the table.
 */

export interface Verdict {
  readonly retry: boolean
  readonly breaker: 'failure' | 'not_failure' | 'neutral'
  readonly nextModel: 'at_once' | 'after_retries' | 'never'
}

/** Why an attempt, a stream or a request failed. Kinds are also metric and log labels. */
export type FailureKind =
  | 'connect'
  | 'connect_timeout'
  | 'reset'
  | 'tls'
  | 'headers_timeout'
  | 'first_byte_timeout'
  | 'body_timeout'
  | 'invalid_response'
  | 'upstream_status'
  | 'breaker_open'
  | 'deadline'
  | 'client_gone'
  | 'draining'
  | 'stream_cut'
  | 'stream_stalled'

interface KindEntry extends Verdict {
  /** The registry error the client sees; an upstream status keeps the upstream's own error. */
  readonly code: ErrorCode
}

const TRANSIENT: Omit<KindEntry, 'code'> = { retry: true, breaker: 'failure', nextModel: 'after_retries' }
/** Retrying a silent route only multiplies the wait: move on to the next model when there is one. */
const SILENT: Omit<KindEntry, 'code'> = { retry: true, breaker: 'failure', nextModel: 'at_once' }
/** After commit nothing is retried; the stream ends with an error event. */
const AFTER_COMMIT: Omit<KindEntry, 'code'> = { retry: false, breaker: 'not_failure', nextModel: 'never' }
const ENDS_REQUEST: Omit<KindEntry, 'code'> = { retry: false, breaker: 'neutral', nextModel: 'never' }

export const FAILURE_TABLE: Readonly<Record<Exclude<FailureKind, 'upstream_status'>, KindEntry>> = Object.freeze({
  connect: { code: 'upstream_unreachable', ...TRANSIENT },
  connect_timeout: { code: 'upstream_unreachable', ...TRANSIENT },
  reset: { code: 'upstream_unreachable', ...TRANSIENT },
  // A rejected certificate will be rejected again; the route is broken, not busy.
  tls: { code: 'upstream_unreachable', retry: false, breaker: 'failure', nextModel: 'never' },
  headers_timeout: { code: 'upstream_timeout', ...SILENT },
  first_byte_timeout: { code: 'upstream_timeout', ...SILENT },
  body_timeout: { code: 'upstream_timeout', ...TRANSIENT },
  // A 200 that is not what was asked for (HTML from a captive portal, an oversized body).
  invalid_response: { code: 'invalid_upstream_response', retry: false, breaker: 'not_failure', nextModel: 'never' },
  // Nothing was sent; the next model may be healthy.
  breaker_open: { code: 'circuit_open', retry: false, breaker: 'not_failure', nextModel: 'at_once' },
  // A timeout says something about the upstream: it counts against the breaker.
  deadline: { code: 'upstream_timeout', retry: false, breaker: 'failure', nextModel: 'never' },
  client_gone: { code: 'client_closed_request', ...ENDS_REQUEST },
  draining: { code: 'service_unavailable', ...ENDS_REQUEST },
  stream_cut: { code: 'stream_interrupted', ...AFTER_COMMIT },
  stream_stalled: { code: 'upstream_timeout', ...AFTER_COMMIT },
})

const RETRYABLE_STATUS: Verdict = Object.freeze({ retry: true, breaker: 'failure', nextModel: 'after_retries' })
const RATE_LIMITED: Verdict = Object.freeze({ retry: true, breaker: 'not_failure', nextModel: 'after_retries' })
const CONTEXT_TOO_LONG: Verdict = Object.freeze({ retry: false, breaker: 'not_failure', nextModel: 'at_once' })
const REQUEST_FAULT: Verdict = Object.freeze({ retry: false, breaker: 'not_failure', nextModel: 'never' })
const SERVER_FAULT: Verdict = Object.freeze({ retry: false, breaker: 'failure', nextModel: 'never' })

/**
 * The verdict on an upstream HTTP status and its error code. 429 (not `insufficient_quota`, a
 * billing state no wait changes), 500, 502, 503 and 504 are transient; 429 says the upstream is
 * healthy, so it never trips a breaker. A 400 `context_length_exceeded` moves on to a model with a
 * larger window. Every other 4xx is the request's own fault; other 5xx count against the breaker.
 */
export function verdictForStatus(status: number, code: string): Verdict {
  switch (status) {
    case 429:
      return code === 'insufficient_quota' ? REQUEST_FAULT : RATE_LIMITED
    case 500:
    case 502:
    case 503:
    case 504:
      return RETRYABLE_STATUS
    case 400:
      return code === 'context_length_exceeded' ? CONTEXT_TOO_LONG : REQUEST_FAULT
    default:
      return status >= 500 ? SERVER_FAULT : REQUEST_FAULT
  }
}

/** A failure, ready to be rendered (it is a ProxyError) and judged (its verdict). */
export class Failure extends ProxyError {
  readonly kind: FailureKind
  readonly verdict: Verdict
  /** For `upstream_status`: the upstream's status and how long it asked us to wait, if at all. */
  readonly upstreamStatus: number | undefined
  readonly pushbackMs: number | undefined

  constructor(kind: FailureKind, error: ProxyError, verdict: Verdict, upstreamStatus?: number, pushbackMs?: number) {
    super(error.status, error.type, error.code, error.message, error.headers)
    this.name = 'Failure'
    this.kind = kind
    this.verdict = verdict
    this.upstreamStatus = upstreamStatus
    this.pushbackMs = pushbackMs
  }

  /** The label for metrics and logs: the upstream's status, else the kind. */
  get label(): string {
    return this.upstreamStatus === undefined ? this.kind : String(this.upstreamStatus)
  }
}

/** A failure of one of the table's kinds, with a message that says what happened; no stack. */
export function failure(
  kind: Exclude<FailureKind, 'upstream_status'>,
  message?: string,
  headers?: Readonly<Record<string, string>>,
): Failure {
  const entry = FAILURE_TABLE[kind]
  const registered = ERROR_REGISTRY[entry.code]
  return withoutStack(
    () => new Failure(kind, new ProxyError(registered.status, registered.type, entry.code, message ?? registered.message, headers), entry),
  )
}

/** An upstream's non-2xx answer, already normalised into the error shape. */
export function statusFailure(upstreamStatus: number, normalized: ProxyError, pushbackMs: number | undefined): Failure {
  return withoutStack(
    () => new Failure('upstream_status', normalized, verdictForStatus(upstreamStatus, normalized.code), upstreamStatus, pushbackMs),
  )
}

/** Where an undici error happened, which decides what a body timeout means. */
export type TransportPhase = 'response' | 'first_event' | 'relay'

export interface TransportContext {
  readonly phase: TransportPhase
  readonly connectTimeoutMs: number
  /** The timeout that applied in this phase: headers / first event / stream idle. */
  readonly timeoutMs: number
  readonly bodyTimeoutMs: number
}

const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH'])

/**
 * An undici or socket error → its failure. The caller has already checked the request's own abort
 * (deadline, client gone, draining), which undici also reports as an error.
 */
export function transportFailure(error: unknown, context: TransportContext): Failure {
  const code = (error as { code?: unknown } | null)?.code
  if (context.phase === 'relay') {
    return code === 'UND_ERR_BODY_TIMEOUT'
      ? failure('stream_stalled', `The upstream stream stalled for ${context.bodyTimeoutMs} ms`)
      : failure('stream_cut')
  }
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
      return failure('connect_timeout', `Could not connect to the upstream within ${context.connectTimeoutMs} ms`)
    case 'UND_ERR_HEADERS_TIMEOUT':
      return failure('headers_timeout', `The upstream sent no response within ${context.timeoutMs} ms`)
    case 'UND_ERR_BODY_TIMEOUT':
      // Silence before the first event is a first-byte timeout whichever timer noticed it.
      return context.phase === 'first_event'
        ? failure('first_byte_timeout', 'The upstream stream went silent before its first event')
        : failure('body_timeout', `The upstream response stalled for ${context.bodyTimeoutMs} ms`)
    default:
      break
  }
  if (typeof code === 'string' && UNREACHABLE_CODES.has(code)) return failure('connect', `Could not reach the upstream (${code})`)
  if (typeof code === 'string' && (code.startsWith('ERR_TLS') || code.includes('CERT'))) {
    return failure('tls', `The upstream's TLS certificate was rejected (${code})`)
  }
  return failure('reset', `The upstream connection failed (${typeof code === 'string' ? code : 'socket error'})`)
}

/** An error seen while the request's signal may have fired: the abort explains it first. */
export function failureFrom(
  error: unknown,
  signal: { readonly aborted: boolean; readonly reason: AbortReason | undefined },
  context: TransportContext,
): Failure {
  return signal.aborted && signal.reason !== undefined ? abortFailure(signal.reason) : transportFailure(error, context)
}

/** Why a request's own signal fired; each reason is a failure kind of its own. */
export type AbortReason = 'deadline' | 'client_gone' | 'draining'

const ABORT_MESSAGES: Readonly<Record<AbortReason, string>> = {
  deadline: 'The request deadline passed before the upstream answered',
  client_gone: 'The client closed the connection before the answer was ready',
  draining: 'The proxy is shutting down and could not finish this request',
}

export function abortFailure(reason: AbortReason): Failure {
  return failure(reason, ABORT_MESSAGES[reason])
}

/** How the breaker should count an error thrown through it: only Failures carry a verdict. */
export function breakerVerdict(error: unknown): Verdict['breaker'] {
  return error instanceof Failure ? error.verdict.breaker : 'not_failure'
}
