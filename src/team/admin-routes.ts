import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ReloadReport } from '../config-reload.js'
import { type ProxyError, proxyError } from '../errors.js'
import type { RouteEntry } from '../routes/table.js'
import { TeamError } from './errors.js'
import type { KeyFields } from './key-fields.js'
import type { UsageGrouping } from './store/store.js'
import type { TeamService } from './team-service.js'
import { parseTimeInput } from './time-input.js'
import { USAGE_GROUPINGS } from './usage.js'

/**
 * The admin API: the keys and usage service over HTTP, behind the admin key. Answers mirror the
 * CLI's --json: a record, `{"data":[…]}` for lists and usage, and on creation the record plus
 * "key", the secret, shown this once.
 */

export interface AdminRouteDeps {
  readonly service: TeamService
  readonly adminKey: string
  /** called after a key is updated or revoked, so the request path's key cache drops it */
  readonly onKeyChanged: (keyId: string) => void
  /** `POST /admin/reload`: re-reads the config (the same as SIGHUP); without it the route does not exist. */
  readonly reload?: () => ReloadReport
}

type AdminHandler = (request: FastifyRequest, reply: FastifyReply) => Promise<unknown>

const USAGE_QUERY_NAMES = ['key', 'since', 'until', 'by']
const BEARER = 'bearer '

export function createAdminRoutes(deps: AdminRouteDeps): RouteEntry[] {
  if (deps.adminKey === '') throw new Error('the admin key must not be empty')
  const { service, onKeyChanged } = deps
  const adminKeyDigest = sha256(deps.adminKey)

  const guarded =
    (handler: AdminHandler): AdminHandler =>
    async (request, reply) => {
      if (!presentsKey(request.headers.authorization, adminKeyDigest)) {
        throw proxyError('invalid_api_key', 'The admin routes need the admin key: send Authorization: Bearer <TOPROUTER_PROXY_ADMIN_KEY>')
      }
      try {
        return await handler(request, reply)
      } catch (err: unknown) {
        throw err instanceof TeamError ? toProxyError(err) : err
      }
    }

  const createKey: AdminHandler = async (request, reply) => {
    const { record, secret } = await service.keys.createKey(keyFieldsFrom(request.body))
    return reply.code(201).send({ ...record, key: secret })
  }
  const listKeys: AdminHandler = async () => ({ data: await service.keys.listKeys() })
  const showKey: AdminHandler = async (request) => service.keys.getKey(idOrNameOf(request))
  const updateKey: AdminHandler = async (request) => {
    const fields = keyFieldsFrom(request.body)
    if (Object.keys(fields).length === 0) throw new TeamError('invalid', 'PATCH needs at least one key field, e.g. {"rpm": 60}')
    const record = await service.keys.updateKey(idOrNameOf(request), fields)
    onKeyChanged(record.id)
    return record
  }
  const revokeKey: AdminHandler = async (request) => {
    const record = await service.keys.revokeKey(idOrNameOf(request))
    onKeyChanged(record.id)
    return record
  }
  const usage: AdminHandler = async (request) => {
    const query = usageQueryFrom(request.query as Record<string, unknown>, new Date())
    return { data: await service.usage.summarizeUsage(query) }
  }

  const reload = deps.reload
  const reloadConfig: AdminHandler = async () => {
    if (reload === undefined) throw proxyError('route_not_found')
    const report = reload()
    if (!report.ok) throw proxyError('config_invalid', report.error)
    return { reloaded: true, changed: report.changed, needsRestart: report.needsRestart }
  }

  return [
    ...(reload === undefined ? [] : [{ method: 'POST' as const, urls: ['/admin/reload'], handler: guarded(reloadConfig) }]),
    { method: 'GET', urls: ['/admin/keys'], handler: guarded(listKeys) },
    { method: 'POST', urls: ['/admin/keys'], handler: guarded(createKey) },
    { method: 'GET', urls: ['/admin/keys/:idOrName'], handler: guarded(showKey) },
    { method: 'PATCH', urls: ['/admin/keys/:idOrName'], handler: guarded(updateKey) },
    { method: 'DELETE', urls: ['/admin/keys/:idOrName'], handler: guarded(revokeKey) },
    { method: 'GET', urls: ['/admin/usage'], handler: guarded(usage) },
  ]
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest()
}

/** Both sides are hashed first, so the comparison takes the same time whatever the lengths. */
function presentsKey(authorization: string | undefined, adminKeyDigest: Buffer): boolean {
  // RFC 9110 §11.1: the scheme is case-insensitive.
  if (authorization === undefined || authorization.slice(0, BEARER.length).toLowerCase() !== BEARER) return false
  return timingSafeEqual(sha256(authorization.slice(BEARER.length)), adminKeyDigest)
}

function toProxyError(err: TeamError): ProxyError {
  switch (err.kind) {
    case 'invalid':
      return proxyError('invalid_request', err.message)
    case 'not_found':
      return proxyError('key_not_found', err.message)
    case 'conflict':
      return proxyError('key_name_taken', err.message)
  }
}

function idOrNameOf(request: FastifyRequest): string {
  return (request.params as { idOrName: string }).idOrName
}

/** The app hands routes the body as bytes (its content-type parser keeps them); a key's fields are a JSON object. */
function keyFieldsFrom(body: unknown): KeyFields {
  if (!Buffer.isBuffer(body) || body.length === 0)
    throw proxyError('invalid_json', 'Request body is empty; expected a JSON object of key fields')
  let parsed: unknown
  try {
    parsed = JSON.parse(body.toString('utf8'))
  } catch {
    throw proxyError('invalid_json')
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw proxyError('invalid_request', 'The body must be a JSON object of key fields, such as {"name": "alice", "rpm": 60}')
  }
  return parsed as KeyFields
}

function usageQueryFrom(query: Record<string, unknown>, now: Date) {
  for (const name of Object.keys(query)) {
    if (!USAGE_QUERY_NAMES.includes(name)) {
      throw new TeamError('invalid', `unknown query parameter "${name}" (known: ${USAGE_QUERY_NAMES.join(', ')})`)
    }
  }
  const text = (name: string): string | undefined => {
    const value = query[name]
    if (value === undefined || typeof value === 'string') return value
    throw new TeamError('invalid', `${name} must be given once, found ${JSON.stringify(value)}`)
  }
  const time = (name: string) => {
    const value = text(name)
    return value === undefined ? undefined : new Date(parseTimeInput(name, value, now, 'past'))
  }
  const by = text('by') ?? 'key'
  if (!(USAGE_GROUPINGS as readonly string[]).includes(by)) {
    throw new TeamError('invalid', `by must be one of ${USAGE_GROUPINGS.join(', ')}, found ${JSON.stringify(by)}`)
  }
  return { key: text('key'), since: time('since'), until: time('until'), by: by as UsageGrouping }
}
