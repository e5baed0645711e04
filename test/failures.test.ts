import t from 'tap'
import { proxyError } from '../src/errors.js'
import {
  abortFailure,
  breakerVerdict,
  FAILURE_TABLE,
  failure,
  statusFailure,
  type TransportPhase,
  transportFailure,
  verdictForStatus,
} from '../src/failures.js'

/**
 * The one classification table, pinned: what each failure means for the client, the retrier, the
 * breaker and the fallback chain. Every other test checks these verdicts through the real proxy;
 * this one makes a change to the table a deliberate, visible edit.
 */

type Row = readonly [status: number, code: string, retry: boolean, breaker: string, nextModel: string]

const KINDS: Readonly<Record<keyof typeof FAILURE_TABLE, Row>> = {
  connect: [502, 'upstream_unreachable', true, 'failure', 'after_retries'],
  connect_timeout: [502, 'upstream_unreachable', true, 'failure', 'after_retries'],
  reset: [502, 'upstream_unreachable', true, 'failure', 'after_retries'],
  tls: [502, 'upstream_unreachable', false, 'failure', 'never'],
  headers_timeout: [504, 'upstream_timeout', true, 'failure', 'at_once'],
  first_byte_timeout: [504, 'upstream_timeout', true, 'failure', 'at_once'],
  body_timeout: [504, 'upstream_timeout', true, 'failure', 'after_retries'],
  invalid_response: [502, 'invalid_upstream_response', false, 'not_failure', 'never'],
  breaker_open: [503, 'circuit_open', false, 'not_failure', 'at_once'],
  deadline: [504, 'upstream_timeout', false, 'failure', 'never'],
  client_gone: [499, 'client_closed_request', false, 'neutral', 'never'],
  draining: [503, 'service_unavailable', false, 'neutral', 'never'],
  stream_cut: [502, 'stream_interrupted', false, 'not_failure', 'never'],
  stream_stalled: [504, 'upstream_timeout', false, 'not_failure', 'never'],
}

t.test('every failure kind: the client error and the verdict', async (t) => {
  t.same(Object.keys(FAILURE_TABLE).sort(), Object.keys(KINDS).sort(), 'the table has exactly these kinds')
  for (const [kind, [status, code, retry, breaker, nextModel]] of Object.entries(KINDS)) {
    const made = failure(kind as keyof typeof FAILURE_TABLE)
    t.same(
      { status: made.status, code: made.code, retry: made.verdict.retry, breaker: made.verdict.breaker, nextModel: made.verdict.nextModel },
      { status, code, retry, breaker, nextModel },
      kind,
    )
    t.equal(made.label, kind, `${kind}: metric and log label`)
    t.equal(made.stack?.split('\n').length ?? 1, 1, `${kind}: built without a stack trace`)
  }
})

t.test('upstream statuses: retried, counted, moved on', async (t) => {
  const rows: ReadonlyArray<readonly [number, string, boolean, string, string]> = [
    [429, 'rate_limit_exceeded', true, 'not_failure', 'after_retries'],
    [429, 'insufficient_quota', false, 'not_failure', 'never'],
    [500, 'upstream_error', true, 'failure', 'after_retries'],
    [502, 'bad_gateway', true, 'failure', 'after_retries'],
    [503, 'service_unavailable', true, 'failure', 'after_retries'],
    [504, 'upstream_timeout', true, 'failure', 'after_retries'],
    [501, 'not_implemented', false, 'failure', 'never'],
    [505, 'upstream_error', false, 'failure', 'never'],
    [400, 'context_length_exceeded', false, 'not_failure', 'at_once'],
    [400, 'invalid_request', false, 'not_failure', 'never'],
    [401, 'invalid_api_key', false, 'not_failure', 'never'],
    [402, 'insufficient_credits', false, 'not_failure', 'never'],
    [403, 'content_policy', false, 'not_failure', 'never'],
    [404, 'model_not_found', false, 'not_failure', 'never'],
    [408, 'upstream_timeout', false, 'not_failure', 'never'],
    [422, 'invalid_request', false, 'not_failure', 'never'],
  ]
  for (const [status, code, retry, breaker, nextModel] of rows) {
    t.same({ ...verdictForStatus(status, code) }, { retry, breaker, nextModel }, `${status} ${code}`)
  }
  const made = statusFailure(503, proxyError('service_unavailable'), 1500)
  t.equal(made.kind, 'upstream_status')
  t.equal(made.label, '503', 'labelled by the upstream status')
  t.equal(made.upstreamStatus, 503)
  t.equal(made.pushbackMs, 1500, 'the pushback travels with the failure')
})

t.test('undici and socket errors, by the phase they happened in', async (t) => {
  const context = (phase: TransportPhase) => ({ phase, connectTimeoutMs: 5000, timeoutMs: 60000, bodyTimeoutMs: 30000 })
  const rows: ReadonlyArray<readonly [string | undefined, TransportPhase, string, RegExp]> = [
    ['UND_ERR_CONNECT_TIMEOUT', 'response', 'connect_timeout', /within 5000 ms/],
    ['UND_ERR_HEADERS_TIMEOUT', 'response', 'headers_timeout', /within 60000 ms/],
    ['UND_ERR_BODY_TIMEOUT', 'response', 'body_timeout', /stalled for 30000 ms/],
    ['UND_ERR_BODY_TIMEOUT', 'first_event', 'first_byte_timeout', /silent before its first event/],
    ['UND_ERR_BODY_TIMEOUT', 'relay', 'stream_stalled', /stalled for 30000 ms/],
    ['ECONNREFUSED', 'response', 'connect', /ECONNREFUSED/],
    ['ENOTFOUND', 'response', 'connect', /ENOTFOUND/],
    ['EAI_AGAIN', 'response', 'connect', /EAI_AGAIN/],
    ['EHOSTUNREACH', 'response', 'connect', /EHOSTUNREACH/],
    ['ENETUNREACH', 'response', 'connect', /ENETUNREACH/],
    ['DEPTH_ZERO_SELF_SIGNED_CERT', 'response', 'tls', /DEPTH_ZERO_SELF_SIGNED_CERT/],
    ['ERR_TLS_CERT_ALTNAME_INVALID', 'response', 'tls', /ERR_TLS_CERT_ALTNAME_INVALID/],
    ['ECONNRESET', 'response', 'reset', /ECONNRESET/],
    ['UND_ERR_SOCKET', 'first_event', 'reset', /UND_ERR_SOCKET/],
    [undefined, 'response', 'reset', /socket error/],
    ['ECONNRESET', 'relay', 'stream_cut', /cut before it finished/],
  ]
  for (const [code, phase, kind, message] of rows) {
    const made = transportFailure(code === undefined ? new Error('x') : Object.assign(new Error('x'), { code }), context(phase))
    t.equal(made.kind, kind, `${code ?? 'no code'} in ${phase} → ${kind}`)
    t.match(made.message, message)
    t.notMatch(made.message, /\d+\.\d+/, 'durations are whole numbers')
  }
})

t.test('the request’s own aborts and how a breaker counts what is thrown through it', async (t) => {
  t.same(
    (['deadline', 'client_gone', 'draining'] as const).map((reason) => [abortFailure(reason).kind, abortFailure(reason).status]),
    [
      ['deadline', 504],
      ['client_gone', 499],
      ['draining', 503],
    ],
  )
  t.equal(breakerVerdict(failure('reset')), 'failure')
  t.equal(breakerVerdict(statusFailure(429, proxyError('invalid_request'), undefined)), 'not_failure')
  t.equal(breakerVerdict(failure('client_gone')), 'neutral')
  t.equal(breakerVerdict(new Error('a bug')), 'not_failure', 'an unexpected error says nothing about the upstream')
})

t.test('retried statuses: 429 (not insufficient_quota), 500, 502, 503, 504 only', async (t) => {
  const table: ReadonlyArray<[number, string | undefined, boolean]> = [
    [429, undefined, true],
    [429, 'rate_limit_exceeded', true],
    [429, 'insufficient_quota', false],
    [500, undefined, true],
    [502, undefined, true],
    [503, undefined, true],
    [504, undefined, true],
    [503, 'insufficient_quota', true],
    [501, undefined, false],
    [505, undefined, false],
    [200, undefined, false],
    [301, undefined, false],
    [400, undefined, false],
    [400, 'context_length_exceeded', false],
    [401, undefined, false],
    [402, undefined, false],
    [403, undefined, false],
    [404, undefined, false],
    [408, undefined, false],
    [409, undefined, false],
    [413, undefined, false],
    [422, undefined, false],
  ]
  for (const [status, code, expected] of table) {
    t.equal(verdictForStatus(status, code ?? '').retry, expected, `${status}${code === undefined ? '' : ` ${code}`}`)
  }
})
