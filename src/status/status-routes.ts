import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { proxyError } from '../errors.js'
import { sendError } from '../reply/render-error.js'
import type { RouteEntry } from '../routes/table.js'
import type { BreakerState } from '../upstream/breakers.js'
import { STATUS_PAGE_CSP, STATUS_PAGE_HTML } from './status-page.js'
import type { StatusRecorder } from './status-recorder.js'

/**
 * GET /status (the page) and GET /status.json (what it polls). Local mode: open, like /metrics.
 * Team mode: behind the admin key, as HTTP Basic's password (browsers ask for it natively) or as
 * a Bearer token; without an admin key configured the routes do not exist (404, like /admin/*).
 */

export interface StatusRouteDeps {
  readonly recorder: StatusRecorder
  readonly breakerStates: () => Readonly<Record<string, BreakerState>>
  /** Team mode: the admin key, or undefined when none is configured. */
  readonly team: { readonly adminKey: string | undefined } | undefined
}

const REALM = 'Basic realm="toprouter-proxy status", charset="UTF-8"'

export function createStatusRoutes(deps: StatusRouteDeps): RouteEntry[] {
  if (deps.team !== undefined && (deps.team.adminKey === undefined || deps.team.adminKey === '')) return []
  const adminKeyDigest = deps.team === undefined ? undefined : sha256(deps.team.adminKey as string)

  function allowed(request: FastifyRequest, reply: FastifyReply): boolean {
    if (adminKeyDigest === undefined || presentsAdminKey(request.headers.authorization, adminKeyDigest)) return true
    sendUnauthorized(reply)
    return false
  }

  return [
    {
      method: 'GET',
      urls: ['/status'],
      // The operator watches a drain too.
      servesWhileDraining: true,
      handler: async (request, reply) => {
        if (!allowed(request, reply)) return reply
        return reply
          .header('content-type', 'text/html; charset=utf-8')
          .header('cache-control', 'no-store')
          .header('content-security-policy', STATUS_PAGE_CSP)
          .header('x-content-type-options', 'nosniff')
          .send(STATUS_PAGE_HTML)
      },
    },
    {
      method: 'GET',
      urls: ['/status.json'],
      servesWhileDraining: true,
      handler: async (request, reply) => {
        if (!allowed(request, reply)) return reply
        return reply
          .header('content-type', 'application/json; charset=utf-8')
          .header('cache-control', 'no-store')
          .send(JSON.stringify(deps.recorder.snapshot(deps.breakerStates())))
      },
    },
  ]
}

function sendUnauthorized(reply: FastifyReply): void {
  const error = proxyError(
    'invalid_api_key',
    'The status page needs the admin key: HTTP Basic with TOPROUTER_PROXY_ADMIN_KEY as the password, or Authorization: Bearer <TOPROUTER_PROXY_ADMIN_KEY>',
    { 'www-authenticate': REALM },
  )
  sendError(reply, error)
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest()
}

/**
 * `Basic base64(anyone:<admin key>)` or `Bearer <admin key>` (RFC 7617, RFC 6750; schemes are
 * case-insensitive). Both sides are hashed first, so the comparison takes the same time whatever
 * the lengths, as the admin routes do.
 */
export function presentsAdminKey(authorization: string | undefined, adminKeyDigest: Buffer): boolean {
  if (authorization === undefined) return false
  const space = authorization.indexOf(' ')
  if (space === -1) return false
  const scheme = authorization.slice(0, space).toLowerCase()
  const credentials = authorization.slice(space + 1).trim()
  let presented: string
  if (scheme === 'bearer') {
    presented = credentials
  } else if (scheme === 'basic') {
    const decoded = Buffer.from(credentials, 'base64').toString('utf8')
    const colon = decoded.indexOf(':')
    if (colon === -1) return false
    presented = decoded.slice(colon + 1)
  } else {
    return false
  }
  return timingSafeEqual(sha256(presented), adminKeyDigest)
}
