/**
 * The one error registry. Every non-2xx response the proxy sends is rendered from an entry here
 * (or from an upstream error normalised into the same shape), so the README's error table and this
 * object are checked against each other by test/error-registry.test.ts.
 */

export interface ErrorBody {
  error: { message: string; type: string; code: string }
}

interface RegistryEntry {
  readonly status: number
  readonly type: string
  readonly message: string
}

export const ERROR_REGISTRY = Object.freeze({
  invalid_json: { status: 400, type: 'invalid_request_error', message: 'Request body is not valid JSON' },
  invalid_request: { status: 400, type: 'invalid_request_error', message: 'Invalid request' },
  config_invalid: { status: 422, type: 'invalid_request_error', message: 'The config file is invalid; the running config stays' },
  missing_api_key: {
    status: 401,
    type: 'authentication_error',
    message: 'No API key: send Authorization: Bearer <key>, or start the proxy with TOPROUTER_API_KEY set',
  },
  invalid_api_key: { status: 401, type: 'authentication_error', message: 'Unknown API key: send Authorization: Bearer <your gateway key>' },
  key_revoked: { status: 401, type: 'authentication_error', message: 'This gateway key has been revoked' },
  key_expired: { status: 401, type: 'authentication_error', message: 'This gateway key has expired' },
  budget_exceeded: { status: 402, type: 'billing_error', message: "This gateway key's budget for the period is spent" },
  model_not_allowed: { status: 403, type: 'permission_error', message: 'This gateway key may not use this model' },
  key_not_found: { status: 404, type: 'not_found_error', message: 'No such key' },
  key_name_taken: { status: 409, type: 'invalid_request_error', message: 'A key with this name already exists' },
  key_rate_limit_exceeded: { status: 429, type: 'rate_limit_error', message: "Over this gateway key's rate limit" },
  route_not_found: { status: 404, type: 'not_found_error', message: 'Unknown route' },
  model_not_found: { status: 404, type: 'not_found_error', message: 'Model not found' },
  client_closed_request: {
    status: 499,
    type: 'invalid_request_error',
    message: 'The client closed the connection before the answer was ready',
  },
  request_timeout: {
    status: 408,
    type: 'invalid_request_error',
    message: 'The request headers or body did not arrive in time',
  },
  method_not_allowed: { status: 405, type: 'invalid_request_error', message: 'Method not allowed' },
  expectation_failed: {
    status: 417,
    type: 'invalid_request_error',
    message: 'Only "Expect: 100-continue" is supported',
  },
  request_too_large: { status: 413, type: 'invalid_request_error', message: 'Request body is too large' },
  headers_too_large: { status: 431, type: 'invalid_request_error', message: 'Request headers are too large' },
  unsupported_media_type: {
    status: 415,
    type: 'invalid_request_error',
    message: 'Content-Type must be application/json',
  },
  internal_error: { status: 500, type: 'server_error', message: 'Internal proxy error' },
  bad_gateway: { status: 502, type: 'server_error', message: 'The upstream answered with an unusable response' },
  upstream_unreachable: { status: 502, type: 'server_error', message: 'Could not reach the upstream' },
  invalid_upstream_response: { status: 502, type: 'server_error', message: 'The upstream response was malformed' },
  stream_interrupted: {
    status: 502,
    type: 'server_error',
    message: 'The upstream stream was cut before it finished',
  },
  circuit_open: {
    status: 503,
    type: 'server_error',
    message: 'The circuit breaker for this model is open: its provider is failing',
  },
  service_unavailable: { status: 503, type: 'server_error', message: 'The proxy is shutting down' },
  upstream_timeout: { status: 504, type: 'server_error', message: 'The upstream did not answer in time' },
} satisfies Record<string, RegistryEntry>)

export type ErrorCode = keyof typeof ERROR_REGISTRY

/**
 * The error type for a status, used when an upstream error carries no usable type of its own.
 * Matches the spec's table; statuses not listed fall back by class.
 */
export function typeForStatus(status: number): string {
  switch (status) {
    case 400:
    case 405:
    case 409:
    case 413:
    case 415:
    case 422:
      return 'invalid_request_error'
    case 401:
      return 'authentication_error'
    case 402:
      return 'billing_error'
    case 403:
      return 'permission_error'
    case 404:
      return 'not_found_error'
    case 429:
      return 'rate_limit_error'
    default:
      return status >= 500 ? 'server_error' : 'invalid_request_error'
  }
}

/** An error whose status, type and code the client will see as they are. */
export class ProxyError extends Error {
  readonly status: number
  readonly type: string
  readonly code: string
  /** Headers to send with the error, e.g. Retry-After or the upstream's x-ratelimit-*. */
  readonly headers: Readonly<Record<string, string | string[]>> | undefined

  constructor(status: number, type: string, code: string, message: string, headers?: Readonly<Record<string, string | string[]>>) {
    super(message)
    this.name = 'ProxyError'
    this.status = status
    this.type = type
    this.code = code
    this.headers = headers
  }

  toBody(): ErrorBody {
    return { error: { message: this.message, type: this.type, code: this.code } }
  }
}

/** A registry error, built without a stack trace. */
export function proxyError(code: ErrorCode, message?: string, headers?: Readonly<Record<string, string | string[]>>): ProxyError {
  const entry = ERROR_REGISTRY[code]
  return withoutStack(() => new ProxyError(entry.status, entry.type, code, message ?? entry.message, headers))
}

/**
 * Builds an error without capturing a stack. Expected failures (an upstream 503, a refused
 * connection) are answers, not bugs, and capturing stacks for them is measurable on the hot path.
 */
export function withoutStack<T>(make: () => T): T {
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  try {
    return make()
  } finally {
    Error.stackTraceLimit = limit
  }
}
