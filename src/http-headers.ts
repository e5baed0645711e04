import type { IncomingHttpHeaders } from 'node:http'

/**
 * Header filtering in both directions. Hop-by-hop headers (RFC 9110 §7.6.1) describe one
 * connection and must not be forwarded, nor may any header a `Connection` header names.
 */

export type HeaderMap = Record<string, string | string[]>

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
])

/** Request headers the proxy sets itself, so the client's copies are dropped. */
const SET_BY_PROXY_ON_REQUEST = new Set(['host', 'content-length', 'accept-encoding', 'expect', 'x-request-id'])

/** Response headers that describe the upstream's body framing; the proxy frames its own. */
const FRAMING_ON_RESPONSE = new Set(['content-length', 'date'])

/** Entity headers that must not survive when the proxy replaces the body with the error shape. */
const ENTITY_HEADERS = new Set(['content-type', 'content-length', 'content-encoding', 'etag', 'last-modified', 'date'])

function connectionListed(connection: string | string[] | undefined): Set<string> | undefined {
  // The usual values name no other header; skip building a set for them.
  if (connection === undefined || connection === 'keep-alive' || connection === 'close') return undefined
  const listed = new Set<string>()
  for (const value of Array.isArray(connection) ? connection : [connection]) {
    for (const token of value.split(',')) {
      const name = token.trim().toLowerCase()
      if (name) listed.add(name)
    }
  }
  return listed
}

/** Client request headers → headers for the upstream request (without auth; see upstream/client). */
export function forwardableRequestHeaders(incoming: IncomingHttpHeaders): HeaderMap {
  const listed = connectionListed(incoming.connection)
  const out: HeaderMap = {}
  for (const name in incoming) {
    const value = incoming[name]
    if (value === undefined) continue
    if (HOP_BY_HOP.has(name) || SET_BY_PROXY_ON_REQUEST.has(name)) continue
    if (listed?.has(name)) continue
    out[name] = value
  }
  return out
}

/** TopRouter's `x-ratelimit-*`: they describe the gateway's shared key, so a team member gets its key's own instead. */
export function isRateLimitHeader(name: string): boolean {
  return name.startsWith('x-ratelimit-')
}

/** A copy of `headers` without the `x-ratelimit-*`. */
export function withoutRateLimitHeaders(headers: HeaderMap): HeaderMap {
  const out: HeaderMap = {}
  for (const name in headers) if (!isRateLimitHeader(name)) out[name] = headers[name] as string | string[]
  return out
}

/**
 * Upstream response headers → headers for the client, on a response whose body is passed through.
 * A header whose value contains `secret` (the gateway key, echoed by a careless upstream) is dropped;
 * with `withoutRateLimits` (team mode, which sets the key's own), so are the `x-ratelimit-*`.
 */
export function forwardableResponseHeaders(
  upstream: IncomingHttpHeaders,
  keepLength: boolean,
  secret?: string,
  withoutRateLimits = false,
): HeaderMap {
  const listed = connectionListed(upstream.connection)
  const out: HeaderMap = {}
  for (const name in upstream) {
    const value = upstream[name]
    if (value === undefined) continue
    if (HOP_BY_HOP.has(name) || (!keepLength && FRAMING_ON_RESPONSE.has(name)) || name === 'date') continue
    if (listed?.has(name) || (secret !== undefined && containsSecret(value, secret))) continue
    if (withoutRateLimits && isRateLimitHeader(name)) continue
    out[name] = value
  }
  return out
}

/**
 * Upstream response headers worth keeping when the proxy replaces the body with an error:
 * `retry-after`, `x-ratelimit-*` and any other metadata, without entity or hop-by-hop headers.
 */
export function errorResponseHeaders(upstream: IncomingHttpHeaders, secret?: string): HeaderMap {
  const listed = connectionListed(upstream.connection)
  const out: HeaderMap = {}
  for (const name in upstream) {
    const value = upstream[name]
    if (value === undefined) continue
    if (HOP_BY_HOP.has(name) || ENTITY_HEADERS.has(name) || name === 'set-cookie') continue
    if (listed?.has(name) || (secret !== undefined && containsSecret(value, secret))) continue
    out[name] = value
  }
  return out
}

function containsSecret(value: string | string[], secret: string): boolean {
  return Array.isArray(value) ? value.some((item) => item.includes(secret)) : value.includes(secret)
}

const HEADER_SAFE = /^[\x20-\x7e]*$/
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g

/**
 * A model id is any string; a header value is not (Node throws on control and non-Latin-1
 * characters). Printable ASCII passes as it is; anything else is percent-encoded as UTF-8.
 */
export function headerSafe(value: string): string {
  if (HEADER_SAFE.test(value)) return value
  // encodeURIComponent throws on a lone surrogate; write those as U+FFFD, as UTF-8 does.
  return encodeURIComponent(value.replace(LONE_SURROGATE, '\ufffd'))
}
