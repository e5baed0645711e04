import type { IncomingHttpHeaders } from 'node:http'
import { brotliDecompressSync, gunzipSync, inflateSync } from 'node:zlib'
import { ProxyError, typeForStatus } from '../errors.js'
import { errorResponseHeaders } from '../http-headers.js'
import { scrubSecrets } from '../logging.js'

/**
 * Any upstream error response → the one error shape. JSON errors keep their status, message and
 * string-coerced code, and their type when it is a string; anything else (HTML gateway pages,
 * text, empty or undecodable bodies) becomes a short message naming the status, never raw markup.
 */

const MAX_MESSAGE_CHARS = 2000

const DEFAULT_CODE_BY_STATUS: Readonly<Record<number, string>> = {
  400: 'invalid_request',
  401: 'invalid_api_key',
  402: 'insufficient_credits',
  403: 'forbidden',
  404: 'not_found',
  408: 'upstream_timeout',
  413: 'request_too_large',
  422: 'invalid_request',
  429: 'rate_limit_exceeded',
  500: 'upstream_error',
  502: 'bad_gateway',
  503: 'service_unavailable',
  504: 'upstream_timeout',
}

export function defaultCodeForStatus(status: number): string {
  return DEFAULT_CODE_BY_STATUS[status] ?? (status >= 500 ? 'upstream_error' : 'invalid_request')
}

export function normalizeUpstreamError(status: number, headers: IncomingHttpHeaders, body: Buffer, secret?: string): ProxyError {
  const clientStatus = status >= 400 && status <= 599 ? status : 502
  const passedHeaders = errorResponseHeaders(headers, secret)
  const parsed = parseJsonBody(decodeBody(body, headers['content-encoding']))
  const fields = parsed === undefined ? undefined : errorFields(parsed)

  if (status < 400 || status > 599) {
    return new ProxyError(502, 'server_error', 'bad_gateway', `Upstream answered with unexpected HTTP ${status}`, passedHeaders)
  }
  const message = fields?.message ?? describeNonJson(status, headers['content-type'])
  const type = fields?.type ?? typeForStatus(clientStatus)
  const code = fields?.code ?? defaultCodeForStatus(clientStatus)
  return new ProxyError(clientStatus, type, code, truncate(scrubSecrets(message, secret)), passedHeaders)
}

interface ErrorFields {
  message: string | undefined
  type: string | undefined
  code: string | undefined
}

function errorFields(parsed: unknown): ErrorFields | undefined {
  if (typeof parsed !== 'object' || parsed === null) return undefined
  const record = parsed as Record<string, unknown>
  const inner = record.error
  if (typeof inner === 'string') return { message: inner || undefined, type: undefined, code: stringCode(record.code) }
  const source = typeof inner === 'object' && inner !== null ? (inner as Record<string, unknown>) : record
  const message = firstString(source.message, source.detail, record.message, record.detail)
  const type = typeof source.type === 'string' && source.type !== '' ? source.type : undefined
  const code = stringCode(source.code)
  if (message === undefined && type === undefined && code === undefined) return undefined
  return { message, type, code }
}

function stringCode(code: unknown): string | undefined {
  if (typeof code === 'string') return code === '' ? undefined : code
  if (typeof code === 'number' && Number.isFinite(code)) return String(code)
  return undefined
}

function firstString(...candidates: unknown[]): string | undefined {
  for (const candidate of candidates) {
    if (typeof candidate === 'string' && candidate.trim() !== '') return candidate
  }
  return undefined
}

function describeNonJson(status: number, contentType: string | string[] | undefined): string {
  const kind = String(contentType ?? '')
    .split(';')[0]
    ?.trim()
  return kind
    ? `Upstream returned HTTP ${status} with a non-JSON body (${kind})`
    : `Upstream returned HTTP ${status} with no usable error body`
}

function decodeBody(body: Buffer, encoding: string | string[] | undefined): Buffer | undefined {
  const name = String(encoding ?? '')
    .trim()
    .toLowerCase()
  try {
    if (name === '' || name === 'identity') return body
    if (name === 'gzip' || name === 'x-gzip') return gunzipSync(body)
    if (name === 'deflate') return inflateSync(body)
    if (name === 'br') return brotliDecompressSync(body)
  } catch {
    return undefined
  }
  return undefined
}

function parseJsonBody(body: Buffer | undefined): unknown {
  if (body === undefined || body.length === 0) return undefined
  try {
    return JSON.parse(body.toString('utf8'))
  } catch {
    return undefined
  }
}

function truncate(message: string): string {
  return message.length > MAX_MESSAGE_CHARS ? `${message.slice(0, MAX_MESSAGE_CHARS)}…` : message
}
