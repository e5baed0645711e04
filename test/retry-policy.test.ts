import t from 'tap'
import {
  type BackoffOptions,
  backoffDelayMs,
  decideRetry,
  parseDurationMs,
  type RetryInput,
  serverPushbackMs,
} from '../src/upstream/retry-policy.js'
import { TOPROUTER_RATE_LIMIT_HEADERS } from './helpers/fake-upstream.js'

const BACKOFF: BackoffOptions = { baseDelayMs: 500, maxDelayMs: 8000 }
const half = () => 0.5
const zero = () => 0
const almostOne = () => 0.999
/** A fixed wall clock: Sun, 06 Nov 1994 08:49:37 GMT. */
const NOW_MS = Date.UTC(1994, 10, 6, 8, 49, 37)

t.test('backoff: full jitter stays within [0, min(maxDelayMs, baseDelayMs * 2^n))', async (t) => {
  for (let retryIndex = 0; retryIndex < 12; retryIndex++) {
    const ceiling = Math.min(8000, 500 * 2 ** retryIndex)
    t.equal(backoffDelayMs(retryIndex, BACKOFF, zero), 0, `retry ${retryIndex}: random 0 → 0`)
    const high = backoffDelayMs(retryIndex, BACKOFF, almostOne)
    t.ok(high < ceiling && high >= ceiling * 0.99, `retry ${retryIndex}: random 0.999 → just under ${ceiling}, got ${high}`)
  }
})

t.test('backoff: exact values for random 0.5 grow ×2 up to the maxDelay cap', async (t) => {
  const delays = [0, 1, 2, 3, 4, 5, 6, 50].map((retryIndex) => backoffDelayMs(retryIndex, BACKOFF, half))
  t.same(delays, [250, 500, 1000, 2000, 4000, 4000, 4000, 4000])
})

t.test('backoff: huge retry indexes, a zero base and a misbehaving random source are safe', async (t) => {
  t.equal(backoffDelayMs(5000, BACKOFF, half), 4000, '2^5000 does not overflow the cap')
  t.equal(backoffDelayMs(3, { baseDelayMs: 0, maxDelayMs: 8000 }, half), 0)
  t.equal(backoffDelayMs(3, { baseDelayMs: 500, maxDelayMs: 0 }, half), 0)
  t.equal(backoffDelayMs(-1, BACKOFF, half), 250, 'a negative index is the first retry')
  t.equal(
    backoffDelayMs(0, BACKOFF, () => 1),
    0,
    'random() === 1 is out of range: no delay past the ceiling',
  )
  t.equal(
    backoffDelayMs(0, BACKOFF, () => -0.5),
    0,
  )
  t.equal(
    backoffDelayMs(0, BACKOFF, () => Number.NaN),
    0,
  )
  t.ok(Number.isInteger(backoffDelayMs(1, { baseDelayMs: 3, maxDelayMs: 100 }, () => 0.123)), 'whole ms')
})

t.test('durations: valid Go-style durations → whole ms, rounded up', async (t) => {
  const valid: ReadonlyArray<[string, number]> = [
    ['30s', 30_000],
    ['15s', 15_000],
    ['1m30s', 90_000],
    ['250ms', 250],
    ['1h2m3.5s', 3_723_500],
    ['0s', 0],
    ['6m0s', 360_000],
    ['1h', 3_600_000],
    ['0.3s', 300],
    ['.5s', 500],
    ['1.5ms', 2],
    ['20ms', 20],
    ['1500us', 2],
    ['1µs', 1],
    ['1ns', 1],
    ['2m', 120_000],
    [' 30s ', 30_000],
  ]
  for (const [input, expected] of valid) t.equal(parseDurationMs(input), expected, JSON.stringify(input))
})

t.test('durations: garbage → undefined', async (t) => {
  const garbage = [
    '',
    ' ',
    'abc',
    '-5s',
    '+5s',
    '5',
    '0',
    '1x',
    '5 s',
    's',
    'ms',
    '1m30',
    'NaN',
    'Infinity',
    'Infinitys',
    '1e3s',
    '1.2.3s',
    '1s-',
    '1,5s',
    `${'1'.repeat(100)}s`,
    '1s'.repeat(40),
  ]
  for (const input of garbage) t.equal(parseDurationMs(input), undefined, JSON.stringify(input))
})

/** What TopRouter sends on every response, errors included: nothing here says "wait". */
const TOPROUTER_HEADERS = TOPROUTER_RATE_LIMIT_HEADERS
const RETRYABLE_5XX = [500, 502, 503, 504]

t.test('pushback: retry-after-ms and Retry-After alone, on a 429 and on every retryable 5xx', async (t) => {
  for (const status of [429, ...RETRYABLE_5XX]) {
    t.equal(serverPushbackMs(status, { 'retry-after-ms': '1500' }, NOW_MS), 1500, `${status}: retry-after-ms`)
    t.equal(serverPushbackMs(status, { 'retry-after-ms': '12.3' }, NOW_MS), 13, `${status}: fractional ms round up`)
    t.equal(serverPushbackMs(status, { 'retry-after-ms': '0' }, NOW_MS), 0, `${status}: retry-after-ms 0`)
    t.equal(serverPushbackMs(status, { 'retry-after': '2' }, NOW_MS), 2000, `${status}: Retry-After seconds`)
    t.equal(serverPushbackMs(status, { 'retry-after': '1.5' }, NOW_MS), 1500, `${status}: decimal seconds`)
    t.equal(serverPushbackMs(status, { 'retry-after': '0.3' }, NOW_MS), 300, `${status}: no float noise adds a ms`)
    t.equal(serverPushbackMs(status, { 'retry-after': '0' }, NOW_MS), 0, `${status}: Retry-After 0`)
    t.equal(serverPushbackMs(status, {}, NOW_MS), undefined, `${status}: no headers → undefined`)
    t.equal(serverPushbackMs(status, { 'retry-after': undefined }, NOW_MS), undefined, `${status}: an undefined value`)
  }
})

t.test("pushback: TopRouter's everyday x-ratelimit-* headers are not pushback, whatever the status", async (t) => {
  for (const status of [429, ...RETRYABLE_5XX]) {
    t.equal(serverPushbackMs(status, TOPROUTER_HEADERS, NOW_MS), undefined, `${status}: 59 of 60 requests left → no wait`)
  }
  t.equal(serverPushbackMs(429, { 'x-ratelimit-reset-requests': '1m30s' }, NOW_MS), undefined, 'a reset without a remaining count')
  t.equal(serverPushbackMs(429, { 'x-ratelimit-reset-tokens': '5s' }, NOW_MS), undefined, 'a tokens reset without a remaining count')
})

t.test('pushback: on a 429 the reset of a spent quota is the wait', async (t) => {
  const requestsSpent = { ...TOPROUTER_HEADERS, 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '1m30s' }
  t.equal(serverPushbackMs(429, requestsSpent, NOW_MS), 90_000, 'remaining-requests 0 → reset-requests (not the tokens reset)')
  const tokensSpent = { ...TOPROUTER_HEADERS, 'x-ratelimit-remaining-tokens': '0', 'x-ratelimit-reset-tokens': '250ms' }
  t.equal(serverPushbackMs(429, tokensSpent, NOW_MS), 250, 'remaining-tokens 0 → reset-tokens (not the requests reset)')
  t.equal(
    serverPushbackMs(429, { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '1s' }, NOW_MS),
    1000,
    'only the two headers of that quota',
  )
  t.equal(
    serverPushbackMs(429, { 'x-ratelimit-remaining-requests': '1', 'x-ratelimit-reset-requests': '1s' }, NOW_MS),
    undefined,
    'one request left is not a spent quota',
  )
  t.equal(
    serverPushbackMs(429, { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-tokens': '5s' }, NOW_MS),
    undefined,
    "a spent requests quota never borrows the tokens' reset",
  )
  t.equal(
    serverPushbackMs(429, { 'x-ratelimit-remaining-tokens': '0', 'x-ratelimit-reset-requests': '5s' }, NOW_MS),
    undefined,
    "a spent tokens quota never borrows the requests' reset",
  )
  t.equal(
    serverPushbackMs(429, { 'x-ratelimit-remaining-requests': ['0', '59'], 'x-ratelimit-reset-requests': ['2s', '30s'] }, NOW_MS),
    2000,
    'repeated headers: the first values',
  )
})

t.test('pushback: on a 429 with both quotas spent, the longer reset', async (t) => {
  const both = (resetRequests: string, resetTokens: string) => ({
    ...TOPROUTER_HEADERS,
    'x-ratelimit-remaining-requests': '0',
    'x-ratelimit-reset-requests': resetRequests,
    'x-ratelimit-remaining-tokens': '0',
    'x-ratelimit-reset-tokens': resetTokens,
  })
  t.equal(serverPushbackMs(429, both('30s', '15s'), NOW_MS), 30_000, 'requests reset longer')
  t.equal(serverPushbackMs(429, both('2s', '1m'), NOW_MS), 60_000, 'tokens reset longer')
  t.equal(serverPushbackMs(429, both('0s', '0s'), NOW_MS), 0, 'both 0 → 0, a value')
  t.equal(serverPushbackMs(429, both('garbage', '3s'), NOW_MS), 3000, 'a garbage requests reset: the tokens reset')
  t.equal(serverPushbackMs(429, both('3s', '5'), NOW_MS), 3000, 'a unitless tokens reset: the requests reset')
  t.equal(serverPushbackMs(429, both('soon', 'later'), NOW_MS), undefined, 'both garbage → undefined')
})

t.test('pushback: a remaining count that is not a number is not 0', async (t) => {
  for (const remaining of ['', ' ', 'none', 'zero', '-0', '+0', '0x0', '0s', 'NaN', '-1', '1e0', '0,0']) {
    const headers = { ...TOPROUTER_HEADERS, 'x-ratelimit-remaining-requests': remaining, 'x-ratelimit-remaining-tokens': remaining }
    t.equal(serverPushbackMs(429, headers, NOW_MS), undefined, `remaining ${JSON.stringify(remaining)} → no wait`)
  }
  for (const remaining of ['0', ' 0 ', '00', '0.0']) {
    const headers = { ...TOPROUTER_HEADERS, 'x-ratelimit-remaining-requests': remaining }
    t.equal(serverPushbackMs(429, headers, NOW_MS), 30_000, `remaining ${JSON.stringify(remaining)} is 0`)
  }
  t.equal(
    serverPushbackMs(429, { ...TOPROUTER_HEADERS, 'x-ratelimit-remaining-requests': [] }, NOW_MS),
    undefined,
    'an empty list is no count',
  )
})

t.test('pushback: on 5xx the x-ratelimit-reset-* headers are ignored, even with a spent quota', async (t) => {
  const spent = {
    ...TOPROUTER_HEADERS,
    'x-ratelimit-remaining-requests': '0',
    'x-ratelimit-remaining-tokens': '0',
  }
  for (const status of RETRYABLE_5XX) {
    t.equal(serverPushbackMs(status, spent, NOW_MS), undefined, `${status}: no wait from the resets`)
    t.equal(serverPushbackMs(status, { ...spent, 'retry-after': '2' }, NOW_MS), 2000, `${status}: Retry-After still counts`)
  }
  for (const status of [200, 400, 401, 404, 408, 425]) {
    t.equal(serverPushbackMs(status, spent, NOW_MS), undefined, `${status}: only a 429 reads the resets`)
  }
})

t.test("pushback precedence: retry-after-ms, then Retry-After, then (429 only) a spent quota's reset", async (t) => {
  const spent = { ...TOPROUTER_HEADERS, 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '30s' }
  for (const status of [429, 503]) {
    t.equal(
      serverPushbackMs(status, { ...spent, 'retry-after-ms': '100', 'retry-after': '2' }, NOW_MS),
      100,
      `${status}: retry-after-ms first`,
    )
    t.equal(serverPushbackMs(status, { ...spent, 'retry-after': '2' }, NOW_MS), 2000, `${status}: then Retry-After`)
    t.equal(
      serverPushbackMs(status, { ...spent, 'retry-after-ms': '0', 'retry-after': '2' }, NOW_MS),
      0,
      `${status}: a 0 is a value, not absent`,
    )
    t.equal(serverPushbackMs(status, { ...spent, 'retry-after': '0' }, NOW_MS), 0, `${status}: Retry-After 0 beats a 30 s reset`)
  }
  t.equal(serverPushbackMs(429, spent, NOW_MS), 30_000, '429: then the reset')
})

t.test('pushback: garbage in one header falls through to the next', async (t) => {
  const spent = { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '30s' }
  for (const bad of ['', 'soon', '-5', '1e3', 'NaN', 'Infinity', '12ms', `${'9'.repeat(100)}`]) {
    t.equal(
      serverPushbackMs(429, { 'retry-after-ms': bad, 'retry-after': '3', ...spent }, NOW_MS),
      3000,
      `retry-after-ms ${JSON.stringify(bad)} is skipped`,
    )
    t.equal(
      serverPushbackMs(429, { 'retry-after-ms': bad, 'retry-after': bad, ...spent }, NOW_MS),
      30_000,
      `retry-after ${JSON.stringify(bad)} is skipped (429)`,
    )
    t.equal(
      serverPushbackMs(503, { 'retry-after-ms': bad, 'retry-after': bad, ...spent }, NOW_MS),
      undefined,
      `retry-after ${JSON.stringify(bad)} is skipped (503: nothing after it)`,
    )
  }
  t.equal(
    serverPushbackMs(
      429,
      { 'retry-after': 'later', 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': 'whenever' },
      NOW_MS,
    ),
    undefined,
  )
  t.equal(serverPushbackMs(503, { 'retry-after': '5' }, NOW_MS), 5000, '"5" is seconds, never Date.parse("5")')
})

t.test('pushback: of a repeated header only the first value counts', async (t) => {
  t.equal(serverPushbackMs(503, { 'retry-after': ['4', '9'] }, NOW_MS), 4000)
  t.equal(
    serverPushbackMs(429, { 'retry-after': [], 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': ['1s'] }, NOW_MS),
    1000,
  )
})

t.test('pushback: an HTTP-date in the future → the difference, in the past → 0', async (t) => {
  const at = (date: string, nowMs = NOW_MS) => serverPushbackMs(503, { 'retry-after': date }, nowMs)
  t.equal(at('Sun, 06 Nov 1994 08:50:07 GMT'), 30_000, 'IMF-fixdate')
  t.equal(at('Sunday, 06-Nov-94 08:50:07 GMT'), 30_000, 'rfc850-date')
  t.equal(at('Sun Nov  6 08:50:07 1994'), 30_000, 'asctime-date, read as GMT')
  t.equal(at('Sun, 06 Nov 1994 08:49:37 GMT', NOW_MS + 0.4), 0, 'now → 0')
  t.equal(at('Sun, 06 Nov 1994 08:49:38 GMT', NOW_MS + 0.5), 1000, 'rounded up')
  t.equal(at('Sat, 05 Nov 1994 08:49:37 GMT'), 0, 'a day ago → 0')
  t.equal(at('Mon, 07 Nov 1994 08:49:37 GMT'), 86_400_000)
  t.equal(serverPushbackMs(429, { 'retry-after': 'Sun, 06 Nov 1994 08:50:07 GMT' }, NOW_MS), 30_000, 'on a 429 too')
  t.equal(
    serverPushbackMs(503, { 'retry-after': 'Sun, 06 Nov 1994 08:49:37 GMT', 'retry-after-ms': '250' }, NOW_MS),
    250,
    'retry-after-ms still wins over a date',
  )
})

t.test('pushback: a two-digit year more than 50 years ahead is the previous century', async (t) => {
  const now2030 = Date.UTC(2030, 0, 1)
  t.equal(serverPushbackMs(503, { 'retry-after': 'Tuesday, 01-Jan-30 00:00:10 GMT' }, now2030), 10_000, '30 → 2030')
  t.equal(serverPushbackMs(503, { 'retry-after': 'Friday, 01-Jan-99 00:00:00 GMT' }, now2030), 0, '99 → 1999, in the past')
})

t.test('pushback: malformed dates are garbage and fall through', async (t) => {
  const fallback = { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '7s' }
  for (const bad of [
    'Sun, 31 Feb 1994 08:49:37 GMT',
    'Sun, 06 Nov 1994 25:00:00 GMT',
    'Sun, 06 Foo 1994 08:49:37 GMT',
    'Sun, 06 Nov 1994 08:49:37 PST',
    'sun, 06 nov 1994 08:49:37 gmt',
    '1994-11-06T08:50:07Z',
    'Nov 6 1994',
    'tomorrow',
  ]) {
    t.equal(serverPushbackMs(429, { 'retry-after': bad, ...fallback }, NOW_MS), 7000, JSON.stringify(bad))
  }
})

/** A retryable status failure on the first attempt with plenty of time: a retry by default. */
function input(overrides: Partial<RetryInput> = {}): RetryInput {
  return {
    attempt: 1,
    maxAttempts: 3,
    retryable: true,
    statusBased: true,
    clientRetryCount: 0,
    pushbackMs: undefined,
    remainingMs: 600_000,
    maxRetryAfterMs: 60_000,
    backoff: BACKOFF,
    random: half,
    ...overrides,
  }
}

t.test('decideRetry: retries with the backoff for attempt - 1 when the server gave no pushback', async (t) => {
  t.same(decideRetry(input()), { retry: true, delayMs: 250, source: 'backoff' })
  t.same(decideRetry(input({ attempt: 2 })), { retry: true, delayMs: 500, source: 'backoff' })
  t.same(decideRetry(input({ attempt: 5, maxAttempts: 10 })), { retry: true, delayMs: 4000, source: 'backoff' })
  t.same(
    decideRetry(input({ statusBased: false, clientRetryCount: 2 })),
    { retry: true, delayMs: 250, source: 'backoff' },
    'a connection failure is retried even while the client retries',
  )
})

t.test('decideRetry: the server wins — the delay is exactly the pushback, even above the backoff', async (t) => {
  t.same(decideRetry(input({ pushbackMs: 30_000 })), { retry: true, delayMs: 30_000, source: 'server' })
  t.same(decideRetry(input({ pushbackMs: 10, random: almostOne })), { retry: true, delayMs: 10, source: 'server' })
  t.same(decideRetry(input({ pushbackMs: 0 })), { retry: true, delayMs: 0, source: 'server' })
  t.same(decideRetry(input({ pushbackMs: 60_000 })), { retry: true, delayMs: 60_000, source: 'server' }, 'the cap is inclusive')
})

t.test('decideRetry: every reason not to retry', async (t) => {
  t.same(decideRetry(input({ retryable: false })), { retry: false, reason: 'not_retryable' })
  t.same(decideRetry(input({ attempt: 3 })), { retry: false, reason: 'attempts_exhausted' })
  t.same(decideRetry(input({ attempt: 4 })), { retry: false, reason: 'attempts_exhausted' })
  t.same(decideRetry(input({ maxAttempts: 1 })), { retry: false, reason: 'attempts_exhausted' })
  t.same(decideRetry(input({ clientRetryCount: 1 })), { retry: false, reason: 'client_retrying' })
  t.same(decideRetry(input({ pushbackMs: 60_001 })), { retry: false, reason: 'pushback_too_long' })
  t.same(decideRetry(input({ remainingMs: 250 })), { retry: false, reason: 'deadline' }, 'backoff == remaining')
  t.same(decideRetry(input({ remainingMs: 100 })), { retry: false, reason: 'deadline' })
  t.same(decideRetry(input({ remainingMs: 0, random: zero })), { retry: false, reason: 'deadline' }, 'no time left')
  t.same(decideRetry(input({ pushbackMs: 5000, remainingMs: 4000 })), { retry: false, reason: 'deadline' })
  t.same(decideRetry(input({ remainingMs: 251 })), { retry: true, delayMs: 250, source: 'backoff' }, 'just in time')
})

t.test('decideRetry: reasons are checked in the documented order', async (t) => {
  const everythingWrong = { attempt: 3, clientRetryCount: 1, pushbackMs: 120_000, remainingMs: 0 }
  t.same(decideRetry(input({ ...everythingWrong, retryable: false })), { retry: false, reason: 'not_retryable' })
  t.same(decideRetry(input(everythingWrong)), { retry: false, reason: 'attempts_exhausted' })
  t.same(decideRetry(input({ ...everythingWrong, attempt: 1 })), { retry: false, reason: 'client_retrying' })
  t.same(decideRetry(input({ ...everythingWrong, attempt: 1, clientRetryCount: 0 })), { retry: false, reason: 'pushback_too_long' })
  t.same(decideRetry(input({ ...everythingWrong, attempt: 1, clientRetryCount: 0, pushbackMs: 1 })), {
    retry: false,
    reason: 'deadline',
  })
})
