/**
 * The retry policy as pure functions of (attempt, failure, headers, time left): no I/O, no timers,
 * no clock of its own. The retry loop asks `decideRetry()` what to do and does the waiting itself,
 * so every rule here is tested by calling it with a fixed random source and a fixed `nowMs`.
 *
 * Rules (SPEC § "Resilience semantics"; which failures are retryable at all is failures.ts's table):
 * full-jitter backoff; the server's pushback wins (`x-ratelimit-reset-*`
 * only on a 429 whose quota is spent), but a pushback longer than `maxRetryAfterMs` or than the
 * time left is answered at once instead of waited out.
 */

export interface BackoffOptions {
  /**
   * Ceiling of the first retry's delay; each further retry doubles it.
   * @default 500
   */
  readonly baseDelayMs: number
  /**
   * No backoff ceiling grows past this.
   * @default 8000
   */
  readonly maxDelayMs: number
}

/**
 * The wait before retry number `retryIndex + 1`, with "full jitter": a uniform random pick in
 * `[0, min(maxDelayMs, baseDelayMs · 2^retryIndex))`. Spreading retries over the whole interval
 * keeps clients that failed together from retrying in lockstep, and does less total work than
 * "equal" or "decorrelated" jitter.
 * See https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/
 *
 * @param retryIndex 0 for the delay before the 2nd attempt, 1 before the 3rd, …
 * @param random a source in `[0, 1)`, e.g. `Math.random`; tests pass a constant.
 * @returns whole milliseconds, `0 <= delay < ceiling` (0 when the ceiling is 0).
 *
 * @example
 * ```ts
 * backoffDelayMs(0, { baseDelayMs: 500, maxDelayMs: 8000 }, () => 0.5) // 250
 * backoffDelayMs(2, { baseDelayMs: 500, maxDelayMs: 8000 }, () => 0.5) // 1000
 * backoffDelayMs(9, { baseDelayMs: 500, maxDelayMs: 8000 }, () => 0.5) // 4000 (capped at 8000)
 * ```
 */
export function backoffDelayMs(retryIndex: number, options: BackoffOptions, random: () => number): number {
  const ceilingMs = backoffCeilingMs(retryIndex, options)
  if (ceilingMs <= 0) return 0
  const r = random()
  // A misbehaving source must not produce a negative delay or one at/over the ceiling.
  const unit = r >= 0 && r < 1 ? r : 0
  return Math.floor(unit * ceilingMs)
}

function backoffCeilingMs(retryIndex: number, { baseDelayMs, maxDelayMs }: BackoffOptions): number {
  if (!(baseDelayMs > 0) || !(maxDelayMs > 0)) return 0
  const exponent = Number.isFinite(retryIndex) && retryIndex > 0 ? Math.floor(retryIndex) : 0
  // 2 ** 1100 is Infinity; Math.min still gives maxDelayMs, so large indexes are safe.
  return Math.min(maxDelayMs, baseDelayMs * 2 ** exponent)
}

/** Longer header values are not durations, numbers or dates; refuse them before any regex runs. */
const MAX_HEADER_VALUE_CHARS = 64

const DURATION_UNIT_MS: Readonly<Record<string, number>> = {
  h: 3_600_000,
  m: 60_000,
  s: 1000,
  ms: 1,
  us: 1e-3,
  µs: 1e-3,
  μs: 1e-3,
  ns: 1e-6,
}
/** One `<number><unit>` component, with the longer units first so `ms` never reads as `m`+`s`. */
const DURATION_COMPONENT = /(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|μs|ns|h|m|s)/y
const NON_NEGATIVE_NUMBER = /^(?:\d+(?:\.\d*)?|\.\d+)$/

/**
 * Parses a Go-style duration as TopRouter and OpenAI send in `x-ratelimit-reset-requests` and
 * `x-ratelimit-reset-tokens` (`"30s"`, `"1m30s"`, `"250ms"`, `"1h2m3.5s"`, `"6m0s"`): one or more
 * `<number><unit>` parts, units `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`. A bare number (`"5"`) is
 * refused: its unit is unknown.
 *
 * @returns whole milliseconds rounded up (a wait is never cut short), or `undefined` for anything
 * that is not such a duration: empty, signed, unitless, unknown unit, or absurdly long input.
 *
 * @example
 * ```ts
 * parseDurationMs('1m30s') // 90000
 * parseDurationMs('1.5ms') // 2
 * parseDurationMs('-5s')   // undefined
 * ```
 */
export function parseDurationMs(value: string): number | undefined {
  const text = value.trim()
  if (text.length === 0 || text.length > MAX_HEADER_VALUE_CHARS) return undefined
  let totalMs = 0
  let index = 0
  while (index < text.length) {
    DURATION_COMPONENT.lastIndex = index
    const match = DURATION_COMPONENT.exec(text)
    if (match === null) return undefined
    const [whole, amount, unit] = match
    totalMs += Number(amount) * (DURATION_UNIT_MS[unit ?? ''] ?? Number.NaN)
    index += whole.length
  }
  return wholeMs(totalMs)
}

/** Header values as Node's `IncomingHttpHeaders` and undici hand them over: lower-case keys. */
export type ResponseHeaders = Readonly<Record<string, string | string[] | undefined>>

/**
 * How long the upstream asked us to wait before trying again, from the first usable of:
 *
 * 1. `retry-after-ms`: milliseconds, possibly fractional (OpenAI's and TopRouter's extension);
 * 2. `retry-after`: delay-seconds (integer or decimal) or an HTTP-date
 *    ({@link https://www.rfc-editor.org/rfc/rfc9110#section-10.2.3 RFC 9110 §10.2.3}); a date
 *    in the past means "now" (0);
 * 3. on a **429** only, the `x-ratelimit-reset-*` of each quota that is spent: when
 *    `x-ratelimit-remaining-requests` is `0`, `x-ratelimit-reset-requests`; when
 *    `x-ratelimit-remaining-tokens` is `0`, `x-ratelimit-reset-tokens` (durations such as
 *    `"1m30s"`, see {@link parseDurationMs}). With both spent, the longer of the two resets.
 *
 * The `x-ratelimit-*` headers are not pushback by themselves: TopRouter sends all six on every
 * response, errors included (`reset-requests: 30s` while 59 of 60 requests remain), so a reset only
 * says when a quota window refills. It means "wait" only when the upstream refused us (429) and the
 * matching quota is empty; on 5xx they are ignored (SPEC § "Resilience semantics").
 *
 * A garbage value in one header is ignored and the next one is read, so one malformed header
 * never hides a good one; a remaining count that is not a number is not `0`. Only the first value
 * of a repeated header is read. Whether `status` is worth a retry at all is
 * the failure table's call (failures.ts `verdictForStatus`), not this function's.
 *
 * @param status the upstream's HTTP status; only a 429 lets the `x-ratelimit-reset-*` headers count.
 * @param headers lower-case header names, as Node and undici provide them.
 * @param nowMs wall-clock time (`Date.now()`), only used for HTTP-dates.
 * @returns whole milliseconds rounded up, or `undefined` when the upstream sent nothing usable.
 *
 * @example
 * ```ts
 * serverPushbackMs(503, { 'retry-after': '2' }, Date.now()) // 2000
 * serverPushbackMs(429, { 'retry-after-ms': 'soon', 'retry-after': '1.5' }, Date.now()) // 1500
 * serverPushbackMs(429, { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '1s' }, Date.now()) // 1000
 * serverPushbackMs(429, { 'x-ratelimit-remaining-requests': '59', 'x-ratelimit-reset-requests': '30s' }, Date.now()) // undefined
 * serverPushbackMs(503, { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '30s' }, Date.now()) // undefined
 * ```
 */
export function serverPushbackMs(status: number, headers: ResponseHeaders, nowMs: number): number | undefined {
  const retryAfterMs = firstValue(headers['retry-after-ms'])
  if (retryAfterMs !== undefined) {
    const parsed = parseNonNegativeNumber(retryAfterMs)
    if (parsed !== undefined) {
      const delayMs = wholeMs(parsed)
      if (delayMs !== undefined) return delayMs
    }
  }

  const retryAfter = firstValue(headers['retry-after'])
  if (retryAfter !== undefined) {
    const seconds = parseNonNegativeNumber(retryAfter)
    const delayMs = seconds !== undefined ? wholeMs(seconds * 1000) : httpDateDelayMs(retryAfter, nowMs)
    if (delayMs !== undefined) return delayMs
  }

  if (status !== 429) return undefined
  const requestsResetMs = spentQuotaResetMs(headers['x-ratelimit-remaining-requests'], headers['x-ratelimit-reset-requests'])
  const tokensResetMs = spentQuotaResetMs(headers['x-ratelimit-remaining-tokens'], headers['x-ratelimit-reset-tokens'])
  if (requestsResetMs === undefined) return tokensResetMs
  if (tokensResetMs === undefined) return requestsResetMs
  return Math.max(requestsResetMs, tokensResetMs)
}

/** A quota's reset as a wait, when its remaining count is exactly 0; otherwise `undefined`. */
function spentQuotaResetMs(remaining: string | string[] | undefined, reset: string | string[] | undefined): number | undefined {
  const remainingText = firstValue(remaining)
  if (remainingText === undefined || parseNonNegativeNumber(remainingText) !== 0) return undefined
  const resetText = firstValue(reset)
  return resetText === undefined ? undefined : parseDurationMs(resetText)
}

function firstValue(value: string | string[] | undefined): string | undefined {
  return typeof value === 'string' ? value : value?.[0]
}

function parseNonNegativeNumber(value: string): number | undefined {
  const text = value.trim()
  if (text.length > MAX_HEADER_VALUE_CHARS || !NON_NEGATIVE_NUMBER.test(text)) return undefined
  return Number(text)
}

/**
 * Rounds a millisecond amount up to a whole millisecond, first snapping it to whole nanoseconds so
 * that binary floating-point noise (`0.3 * 1000 === 300.00000000000006`) does not add one.
 */
function wholeMs(valueMs: number): number | undefined {
  if (!Number.isFinite(valueMs) || valueMs < 0) return undefined
  const result = Math.ceil(Math.round(valueMs * 1e6) / 1e6)
  return Number.isFinite(result) ? result : undefined
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec']
const MONTH = `(?<month>${MONTHS.join('|')})`
const TIME = '(?<hours>\\d{2}):(?<minutes>\\d{2}):(?<seconds>\\d{2})'
const WEEKDAY = '(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)'
/** The three HTTP-date forms of RFC 9110 §5.6.7, with the same named groups. */
const HTTP_DATES: readonly RegExp[] = [
  // IMF-fixdate, the preferred form: `Sun, 06 Nov 1994 08:49:37 GMT`
  new RegExp(`^${WEEKDAY}, (?<day>\\d{2}) ${MONTH} (?<year>\\d{4}) ${TIME} GMT$`),
  // rfc850-date, obsolete but still to be accepted: `Sunday, 06-Nov-94 08:49:37 GMT`
  new RegExp(`^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (?<day>\\d{2})-${MONTH}-(?<year>\\d{2}) ${TIME} GMT$`),
  // asctime-date, C's asctime() in GMT: `Sun Nov  6 08:49:37 1994`
  new RegExp(`^${WEEKDAY} ${MONTH} (?<day> \\d|\\d{2}) ${TIME} (?<year>\\d{4})$`),
]

/**
 * The delay until an HTTP-date, clamped at 0. Parsed by hand: `Date.parse` accepts far more than
 * HTTP-dates (`Date.parse('5')` is a day in 2001) and reads the asctime form as local time.
 */
function httpDateDelayMs(value: string, nowMs: number): number | undefined {
  const text = value.trim()
  if (text.length > MAX_HEADER_VALUE_CHARS) return undefined
  let groups: Record<string, string> | undefined
  for (const pattern of HTTP_DATES) {
    groups = pattern.exec(text)?.groups
    if (groups !== undefined) break
  }
  if (groups === undefined) return undefined
  const { day = '', month = '', year = '', hours = '', minutes = '', seconds = '' } = groups
  const dayOfMonth = Number(day)
  const monthIndex = MONTHS.indexOf(month)
  const fullYear = year.length === 2 ? fourDigitYear(Number(year), nowMs) : Number(year)
  if (monthIndex < 0 || dayOfMonth < 1 || Number(hours) > 23 || Number(minutes) > 59 || Number(seconds) > 60) {
    return undefined
  }
  const dateMs = Date.UTC(fullYear, monthIndex, dayOfMonth, Number(hours), Number(minutes), Number(seconds))
  // Date.UTC rolls 31 Feb over into March; such a date is not one the server meant.
  if (!Number.isFinite(dateMs) || new Date(dateMs).getUTCDate() !== dayOfMonth) return undefined
  return wholeMs(Math.max(0, dateMs - nowMs))
}

/** RFC 9110 §5.6.7: a two-digit year more than 50 years ahead means the century before. */
function fourDigitYear(twoDigitYear: number, nowMs: number): number {
  const currentYear = new Date(nowMs).getUTCFullYear()
  const year = currentYear - (currentYear % 100) + twoDigitYear
  return year > currentYear + 50 ? year - 100 : year
}

/**
 * What the retry loop should do after a failed attempt. `source` says where the delay came from
 * (`'server'`: the upstream's pushback; `'backoff'`: our jitter) so it can be logged.
 */
export type RetryDecision =
  | { readonly retry: true; readonly delayMs: number; readonly source: 'backoff' | 'server' }
  | {
      readonly retry: false
      readonly reason: 'attempts_exhausted' | 'not_retryable' | 'pushback_too_long' | 'deadline' | 'client_retrying'
    }

export interface RetryInput {
  /** Attempts made so far for this model, `>= 1`. */
  readonly attempt: number
  /**
   * Attempts allowed per model, the first one included.
   * @default 3
   */
  readonly maxAttempts: number
  /** The failure kind is retryable (the failure table's verdict). */
  readonly retryable: boolean
  /** The failure was an HTTP status, as opposed to a connection failure or timeout. */
  readonly statusBased: boolean
  /** From `X-Stainless-Retry-Count` (0 when absent). */
  readonly clientRetryCount: number
  /** From {@link serverPushbackMs}. */
  readonly pushbackMs: number | undefined
  /** Time left until the request's deadline. */
  readonly remainingMs: number
  /**
   * A server pushback longer than this is answered at once, not waited out.
   * @default 60000
   */
  readonly maxRetryAfterMs: number
  readonly backoff: BackoffOptions
  /** A source in `[0, 1)`; `Math.random` in production. */
  readonly random: () => number
}

const NOT_RETRYABLE: RetryDecision = Object.freeze({ retry: false, reason: 'not_retryable' })
const ATTEMPTS_EXHAUSTED: RetryDecision = Object.freeze({ retry: false, reason: 'attempts_exhausted' })
const CLIENT_RETRYING: RetryDecision = Object.freeze({ retry: false, reason: 'client_retrying' })
const PUSHBACK_TOO_LONG: RetryDecision = Object.freeze({ retry: false, reason: 'pushback_too_long' })
const DEADLINE: RetryDecision = Object.freeze({ retry: false, reason: 'deadline' })

/**
 * Decides whether to retry after a failed attempt, and after how long. Checked in this order:
 *
 * 1. the failure is not retryable → `not_retryable`;
 * 2. `attempt >= maxAttempts` → `attempts_exhausted`;
 * 3. a status-based failure while the client is itself retrying (`X-Stainless-Retry-Count >= 1`)
 *    → `client_retrying`: two retry loops stacked would multiply the attempts;
 * 4. the server's pushback exceeds `maxRetryAfterMs` → `pushback_too_long`: better to hand the
 *    client the upstream's answer now than to hold the connection that long;
 * 5. the delay would reach the deadline → `deadline`: no attempt could start in time;
 * 6. otherwise retry. With a pushback the delay is exactly the pushback (the server knows when it
 *    will accept us, even if that is longer than our backoff); without, `backoffDelayMs(attempt - 1)`.
 *
 * @example
 * ```ts
 * decideRetry({
 *   attempt: 1, maxAttempts: 3, retryable: true, statusBased: true, clientRetryCount: 0,
 *   pushbackMs: undefined, remainingMs: 600_000, maxRetryAfterMs: 60_000,
 *   backoff: { baseDelayMs: 500, maxDelayMs: 8000 }, random: () => 0.5,
 * }) // { retry: true, delayMs: 250, source: 'backoff' }
 * ```
 */
export function decideRetry(input: RetryInput): RetryDecision {
  if (!input.retryable) return NOT_RETRYABLE
  if (input.attempt >= input.maxAttempts) return ATTEMPTS_EXHAUSTED
  if (input.statusBased && input.clientRetryCount >= 1) return CLIENT_RETRYING
  const { pushbackMs } = input
  if (pushbackMs !== undefined && pushbackMs > input.maxRetryAfterMs) return PUSHBACK_TOO_LONG
  const delayMs = pushbackMs ?? backoffDelayMs(input.attempt - 1, input.backoff, input.random)
  if (delayMs >= input.remainingMs) return DEADLINE
  return { retry: true, delayMs, source: pushbackMs === undefined ? 'backoff' : 'server' }
}
