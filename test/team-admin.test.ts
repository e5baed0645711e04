import { createHash, randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { Lifecycle } from '../src/lifecycle.js'
import { replyWithError } from '../src/reply/render-error.js'
import { registerRouteTable } from '../src/routes/table.js'
import { createAdminRoutes } from '../src/team/admin-routes.js'
import { openTeamService, type TeamService } from '../src/team/team-service.js'
import type { UsageRecord } from '../src/team/usage.js'
import { expectErrorShape } from './helpers/assert-error.js'

/** The admin API over a real socket, on a real SQLite file, wired the way src/app.ts wires the route table. */

const ADMIN_KEY = 'admin-0123456789abcdefghijklmnopqrstuv'
const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` }

interface AdminServer {
  readonly url: string
  readonly service: TeamService
  /** Every id onKeyChanged was called with, in order. */
  readonly changed: string[]
  /** Every keys/usage service method the routes called, in order. */
  readonly serviceCalls: string[]
  readonly logText: () => string
  readonly call: (method: string, path: string, options?: { body?: unknown; headers?: Record<string, string> }) => Promise<Answer>
}

interface Answer {
  readonly status: number
  readonly headers: Record<string, string | string[] | undefined>
  readonly text: string
  readonly json: Record<string, unknown>
}

/** Records the name of every method called on `target`, then calls it. */
function spied<T extends object>(target: T, label: string, calls: string[]): T {
  return new Proxy(target, {
    get(object, property) {
      const value = Reflect.get(object, property)
      if (typeof value !== 'function') return value
      return (...args: unknown[]) => {
        calls.push(`${label}.${String(property)}`)
        return value.apply(object, args)
      }
    },
  })
}

async function startAdmin(t: Test): Promise<AdminServer> {
  const dir = mkdtempSync(join(tmpdir(), 'toprouter-team-admin-'))
  const service = await openTeamService(`sqlite:${join(dir, 'team.db')}`)
  const serviceCalls: string[] = []
  const changed: string[] = []
  const logChunks: string[] = []
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      logChunks.push(chunk.toString())
      callback()
    },
  })
  const app = Fastify({ logger: { level: 'trace', stream }, genReqId: () => randomUUID() })
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => done(null, body))
  app.addHook('onRequest', (request, reply, done) => {
    reply.header('x-request-id', request.id)
    done()
  })
  const routes = createAdminRoutes({
    service: { ...service, keys: spied(service.keys, 'keys', serviceCalls), usage: spied(service.usage, 'usage', serviceCalls) },
    adminKey: ADMIN_KEY,
    onKeyChanged: (keyId) => changed.push(keyId),
  })
  registerRouteTable(app, routes, new Lifecycle())
  app.setErrorHandler(replyWithError)
  await app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(async () => {
    await app.close()
    await service.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`

  const call: AdminServer['call'] = async (method, path, options = {}) => {
    const hasBody = options.body !== undefined
    const res = await request(`${url}${path}`, {
      method: method as 'GET',
      headers: { ...ADMIN, ...(hasBody ? { 'content-type': 'application/json' } : {}), ...options.headers },
      ...(hasBody ? { body: typeof options.body === 'string' ? options.body : JSON.stringify(options.body) } : {}),
    })
    const text = await res.body.text()
    let json: Record<string, unknown> = {}
    try {
      json = JSON.parse(text) as Record<string, unknown>
    } catch {}
    return { status: res.statusCode, headers: res.headers, text, json }
  }
  return { url, service, changed, serviceCalls, logText: () => logChunks.join(''), call }
}

const RECORD_FIELDS = [
  'budgetPeriod',
  'budgetTokens',
  'budgetUsd',
  'createdAt',
  'expiresAt',
  'id',
  'maxConcurrent',
  'metadata',
  'models',
  'name',
  'prefix',
  'revokedAt',
  'rpm',
  'tpm',
]

function usageRecord(keyId: string, overrides: Partial<UsageRecord>): UsageRecord {
  return {
    time: new Date(),
    keyId,
    requestId: randomUUID(),
    modelRequested: 'google/gemini-3.5-flash',
    modelServed: 'google/gemini-3.5-flash',
    status: 200,
    stream: false,
    ending: 'complete',
    attempts: 1,
    promptTokens: 10,
    completionTokens: 20,
    totalTokens: 30,
    costUsd: 0.001,
    latencyMs: 5,
    ttftMs: null,
    ...overrides,
  }
}

t.test('round trip: create → list → show by id and by name → patch → revoke → usage', async (t) => {
  const admin = await startAdmin(t)
  const bodies: string[] = []
  const call = async (...args: Parameters<AdminServer['call']>) => {
    const answer = await admin.call(...args)
    bodies.push(answer.text)
    t.ok(answer.headers['x-request-id'], `${args[0]} ${args[1]} has an x-request-id`)
    return answer
  }

  const created = await call('POST', '/admin/keys', {
    body: {
      name: 'alice',
      rpm: 60,
      tpm: 100_000,
      maxConcurrent: 4,
      budgetTokens: 1_000_000,
      budgetUsd: 25.5,
      budgetPeriod: 'month',
      models: ['google/*', 'anthropic/claude-4.6-sonnet'],
      metadata: { team: 'search' },
      expiresAt: '2030-01-01',
    },
  })
  t.equal(created.status, 201)
  t.match(created.headers['content-type'], /^application\/json/)
  t.same(Object.keys(created.json).sort(), [...RECORD_FIELDS, 'key'].sort(), 'the record plus "key", nothing else')
  t.match(created.json, {
    name: 'alice',
    rpm: 60,
    tpm: 100_000,
    maxConcurrent: 4,
    budgetTokens: 1_000_000,
    budgetUsd: 25.5,
    budgetPeriod: 'month',
    models: ['google/*', 'anthropic/claude-4.6-sonnet'],
    metadata: { team: 'search' },
    expiresAt: '2030-01-01T00:00:00.000Z',
    revokedAt: null,
  })
  const secret = String(created.json.key)
  const id = String(created.json.id)
  t.match(secret, /^tpk_[A-Za-z0-9_-]{43}$/)
  t.match(id, /^key_[A-Za-z0-9_-]+$/)
  t.equal(created.json.prefix, secret.slice(0, 12))

  const bob = await call('POST', '/admin/keys', { body: { name: 'bob', expiresAt: '30d' } })
  t.equal(bob.status, 201)
  const expiresInMs = Date.parse(String(bob.json.expiresAt)) - Date.now()
  t.ok(expiresInMs > 29.9 * 86_400_000 && expiresInMs <= 30 * 86_400_000, 'a span counts forward from now')
  t.match(bob.json, { rpm: null, models: [], metadata: {}, budgetPeriod: 'total' })

  const list = await call('GET', '/admin/keys')
  t.equal(list.status, 200)
  t.same(Object.keys(list.json), ['data'])
  const listed = list.json.data as Array<Record<string, unknown>>
  t.same(listed.map((key) => key.name).sort(), ['alice', 'bob'])
  for (const key of listed) t.same(Object.keys(key).sort(), RECORD_FIELDS, 'a listed key is the record alone')

  const { key: _secret, ...aliceRecord } = created.json
  const byId = await call('GET', `/admin/keys/${id}`)
  t.equal(byId.status, 200)
  t.same(byId.json, aliceRecord, 'show by id is the created record')
  const byName = await call('GET', '/admin/keys/alice')
  t.same(byName.json, aliceRecord, 'show by name is the same record')
  t.same(admin.changed, [], 'reads change nothing')

  const patched = await call('PATCH', '/admin/keys/alice', { body: { rpm: 120, models: ['openai/*'], expiresAt: null } })
  t.equal(patched.status, 200)
  t.match(patched.json, { id, name: 'alice', rpm: 120, tpm: 100_000, models: ['openai/*'], expiresAt: null })
  t.same(admin.changed, [id], 'onKeyChanged got the id, though the key was named')
  const renamed = await call('PATCH', `/admin/keys/${id}`, { body: { name: 'alice2' } })
  t.match(renamed.json, { id, name: 'alice2', rpm: 120 })
  t.same((await call('GET', '/admin/keys/alice2')).json, renamed.json, 'the change is stored')

  const revoked = await call('DELETE', '/admin/keys/alice2')
  t.equal(revoked.status, 200)
  t.match(revoked.json, { id, name: 'alice2' })
  t.match(revoked.json.revokedAt, /^20\d\d-/)
  const again = await call('DELETE', `/admin/keys/${id}`)
  t.equal(again.status, 200, 'revoking twice is fine')
  t.equal(again.json.revokedAt, revoked.json.revokedAt, 'and keeps the first revokedAt')
  t.same(admin.changed, [id, id, id, id])
  t.same(Object.keys(revoked.json).sort(), RECORD_FIELDS)

  const bobId = String(bob.json.id)
  await admin.service.usage.recordUsage([
    usageRecord(id, { time: new Date('2030-01-01T10:00:00Z') }),
    usageRecord(id, { time: new Date('2030-01-02T10:00:00Z'), modelServed: 'openai/gpt-5', modelRequested: 'openai/gpt-5' }),
    usageRecord(bobId, {
      time: new Date('2030-01-02T11:00:00Z'),
      status: 429,
      modelServed: null,
      promptTokens: null,
      completionTokens: null,
      totalTokens: null,
      costUsd: null,
    }),
  ])
  const byKey = await call('GET', '/admin/usage')
  t.equal(byKey.status, 200)
  t.same(Object.keys(byKey.json), ['data'])
  const rows = byKey.json.data as Array<Record<string, unknown>>
  for (const row of rows) {
    t.same(Object.keys(row).sort(), ['completionTokens', 'costUsd', 'errors', 'group', 'promptTokens', 'requests', 'totalTokens'])
  }
  t.match(
    rows.find((row) => row.group === 'alice2'),
    { requests: 2, errors: 0, promptTokens: 20, completionTokens: 40, totalTokens: 60 },
  )
  t.match(
    rows.find((row) => row.group === 'bob'),
    { requests: 1, errors: 1, totalTokens: 0, costUsd: null },
  )

  const byModel = await call('GET', '/admin/usage?key=alice2&by=model')
  t.same(
    (byModel.json.data as Array<{ group: string }>).map((row) => row.group).sort(),
    ['google/gemini-3.5-flash', 'openai/gpt-5'],
    'key by name, grouped by model',
  )
  const byDay = await call('GET', `/admin/usage?key=${id}&by=day&since=2030-01-02&until=2030-01-03`)
  t.match(byDay.json.data, [{ group: '2030-01-02', requests: 1 }], 'since inclusive, until exclusive, by day')
  const longAgo = await call('GET', '/admin/usage?until=7d')
  t.same(longAgo.json.data, [], 'a span counts back from now')

  t.test('canary: the secret and its hash appear in no answer after creation and in no log line', async (t) => {
    const hash = createHash('sha256').update(secret).digest('hex')
    const afterCreation = bodies.slice(1).join('\n')
    for (const canary of [secret, hash]) {
      t.notOk(afterCreation.includes(canary), 'not in any answer')
      t.notOk(admin.logText().includes(canary), 'not in any log line')
    }
    t.notOk(bodies.join('\n').includes(hash), 'the hash is not in the creation answer either')
    t.notOk(admin.logText().includes(ADMIN_KEY), 'the admin key is not logged')
    t.notMatch(bodies.join('\n'), /secret_?hash/i, 'no answer has a hash field')
    t.ok(admin.logText().length > 0, 'something was logged')
  })
})

t.test('every admin route refuses anything but the admin key, before touching the store', async (t) => {
  const admin = await startAdmin(t)
  const member = await admin.service.keys.createKey({ name: 'member' })
  admin.serviceCalls.length = 0
  const lastCharChanged = ADMIN_KEY.slice(0, -1) + (ADMIN_KEY.endsWith('v') ? 'w' : 'v')
  const refused: Array<[string, Record<string, string>]> = [
    ['no Authorization header', {}],
    ['a wrong key', { authorization: 'Bearer not-the-admin-key' }],
    ["a member's own tpk_ secret", { authorization: `Bearer ${member.secret}` }],
    ['Basic with the admin key as password', { authorization: `Basic ${Buffer.from(`admin:${ADMIN_KEY}`).toString('base64')}` }],
    ['Basic with the admin key itself', { authorization: `Basic ${ADMIN_KEY}` }],
    ['the admin key without a scheme', { authorization: ADMIN_KEY }],
    ['a key differing only in the last character', { authorization: `Bearer ${lastCharChanged}` }],
    ['a longer key', { authorization: `Bearer ${ADMIN_KEY}x` }],
    ['a shorter key', { authorization: `Bearer ${ADMIN_KEY.slice(0, -1)}` }],
    ['an empty bearer', { authorization: 'Bearer' }],
  ]
  const routes: Array<[string, string, unknown?]> = [
    ['GET', '/admin/keys'],
    ['POST', '/admin/keys', { name: 'mallory' }],
    ['GET', '/admin/keys/member'],
    ['PATCH', '/admin/keys/member', { rpm: 1 }],
    ['DELETE', '/admin/keys/member'],
    ['GET', '/admin/usage?key=member'],
  ]
  for (const [label, headers] of refused) {
    for (const [method, path, body] of routes) {
      const res = await request(`${admin.url}${path}`, {
        method: method as 'GET',
        headers: { ...headers, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      })
      await t.test(`${label}: ${method} ${path}`, async (t) => {
        await expectErrorShape(t, res, {
          status: 401,
          type: 'authentication_error',
          code: 'invalid_api_key',
          message: /admin routes need the admin key/,
        })
      })
    }
  }
  t.same(admin.serviceCalls, [], 'no refused request reached the service')
  t.same(admin.changed, [])
  t.equal((await admin.service.keys.getKey('member')).revokedAt, null, 'the member key is untouched')
  t.equal((await admin.service.keys.listKeys()).length, 1, 'nothing was created')

  const lowercase = await admin.call('GET', '/admin/keys', { headers: { authorization: `bearer ${ADMIN_KEY}` } })
  t.equal(lowercase.status, 200, 'the scheme is case-insensitive (RFC 9110)')
})

t.test('a wrong method on an admin URL is a 405 naming every method that URL serves', async (t) => {
  const admin = await startAdmin(t)
  const cases: Array<[string, string, string]> = [
    ['PUT', '/admin/keys', 'GET, HEAD, POST'],
    ['DELETE', '/admin/keys', 'GET, HEAD, POST'],
    ['POST', '/admin/keys/alice', 'GET, HEAD, PATCH, DELETE'],
    ['PUT', '/admin/keys/alice', 'GET, HEAD, PATCH, DELETE'],
    ['POST', '/admin/usage', 'GET, HEAD'],
  ]
  for (const [method, path, allow] of cases) {
    const res = await request(`${admin.url}${path}`, { method: method as 'GET', headers: ADMIN })
    await t.test(`${method} ${path}`, async (t) => {
      await expectErrorShape(t, res, { status: 405, code: 'method_not_allowed' })
      t.equal(res.headers.allow, allow)
    })
  }
  const head = await request(`${admin.url}/admin/keys`, { method: 'HEAD', headers: ADMIN })
  await head.body.dump()
  t.equal(head.statusCode, 200, 'GET routes answer HEAD')
  t.same(admin.serviceCalls, ['keys.listKeys'], 'only the HEAD reached the service')
})

t.test('bad input is a 400 that names the field; a taken name is a 409; an unknown key is a 404', async (t) => {
  const admin = await startAdmin(t)
  await admin.service.keys.createKey({ name: 'alice' })
  await admin.service.keys.createKey({ name: 'bob' })
  admin.serviceCalls.length = 0
  const bad: Array<[string, string, unknown, { status: number; code: string; message: RegExp }]> = [
    ['POST', '/admin/keys', {}, { status: 400, code: 'invalid_request', message: /name is required/ }],
    ['POST', '/admin/keys', { name: 'carol', rpm: -1 }, { status: 400, code: 'invalid_request', message: /rpm must be a whole number/ }],
    ['POST', '/admin/keys', { name: 'carol', tpm: 1.5 }, { status: 400, code: 'invalid_request', message: /tpm/ }],
    ['POST', '/admin/keys', { name: 'carol', budgetUsd: 'ten' }, { status: 400, code: 'invalid_request', message: /budgetUsd/ }],
    ['POST', '/admin/keys', { name: 'carol', budgetPeriod: 'year' }, { status: 400, code: 'invalid_request', message: /budgetPeriod/ }],
    [
      'POST',
      '/admin/keys',
      { name: 'carol', models: 'google/*' },
      { status: 400, code: 'invalid_request', message: /models must be a list/ },
    ],
    ['POST', '/admin/keys', { name: 'carol', metadata: { a: 1 } }, { status: 400, code: 'invalid_request', message: /metadata/ }],
    ['POST', '/admin/keys', { name: 'carol', expiresAt: 'tomorrow' }, { status: 400, code: 'invalid_request', message: /expiresAt/ }],
    ['POST', '/admin/keys', { name: 'has space' }, { status: 400, code: 'invalid_request', message: /name must be/ }],
    ['POST', '/admin/keys', { name: 'key_x' }, { status: 400, code: 'invalid_request', message: /name must not start with key_/ }],
    ['POST', '/admin/keys', { name: 'carol', rmp: 5 }, { status: 400, code: 'invalid_request', message: /unknown key field "rmp"/ }],
    [
      'POST',
      '/admin/keys',
      '{"name":"carol","__proto__":{"rpm":1}}',
      { status: 400, code: 'invalid_request', message: /unknown key field "__proto__"/ },
    ],
    ['POST', '/admin/keys', '{"name":', { status: 400, code: 'invalid_json', message: /not valid JSON/ }],
    ['POST', '/admin/keys', '', { status: 400, code: 'invalid_json', message: /empty/ }],
    ['POST', '/admin/keys', '["alice"]', { status: 400, code: 'invalid_request', message: /JSON object/ }],
    ['POST', '/admin/keys', 'null', { status: 400, code: 'invalid_request', message: /JSON object/ }],
    ['POST', '/admin/keys', '"alice"', { status: 400, code: 'invalid_request', message: /JSON object/ }],
    ['POST', '/admin/keys', { name: 'alice' }, { status: 409, code: 'key_name_taken', message: /"alice" already exists/ }],
    ['PATCH', '/admin/keys/bob', { name: 'alice' }, { status: 409, code: 'key_name_taken', message: /"alice" already exists/ }],
    ['PATCH', '/admin/keys/bob', {}, { status: 400, code: 'invalid_request', message: /at least one key field/ }],
    ['PATCH', '/admin/keys/bob', { maxConcurrent: 'many' }, { status: 400, code: 'invalid_request', message: /maxConcurrent/ }],
    ['PATCH', '/admin/keys/bob', '{', { status: 400, code: 'invalid_json', message: /not valid JSON/ }],
    ['GET', '/admin/keys/nobody', undefined, { status: 404, code: 'key_not_found', message: /no key with the name "nobody"/ }],
    [
      'GET',
      '/admin/keys/key_AAAAAAAAAAAAAAAA',
      undefined,
      { status: 404, code: 'key_not_found', message: /the id "key_AAAAAAAAAAAAAAAA"/ },
    ],
    ['PATCH', '/admin/keys/nobody', { rpm: 1 }, { status: 404, code: 'key_not_found', message: /nobody/ }],
    ['DELETE', '/admin/keys/key_nope', undefined, { status: 404, code: 'key_not_found', message: /key_nope/ }],
    ['GET', '/admin/usage?key=nobody', undefined, { status: 404, code: 'key_not_found', message: /nobody/ }],
    ['GET', '/admin/usage?by=hour', undefined, { status: 400, code: 'invalid_request', message: /by must be one of key, model, day/ }],
    ['GET', '/admin/usage?since=yesterday', undefined, { status: 400, code: 'invalid_request', message: /since must be a span/ }],
    ['GET', '/admin/usage?until=2030-13-45', undefined, { status: 400, code: 'invalid_request', message: /until must be/ }],
    ['GET', '/admin/usage?key=alice&key=bob', undefined, { status: 400, code: 'invalid_request', message: /key must be given once/ }],
    ['GET', '/admin/usage?model=x', undefined, { status: 400, code: 'invalid_request', message: /unknown query parameter "model"/ }],
  ]
  for (const [method, path, body, expected] of bad) {
    const raw = typeof body === 'string'
    const res = await request(`${admin.url}${path}`, {
      method: method as 'GET',
      headers: { ...ADMIN, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: raw ? body : JSON.stringify(body) }),
    })
    await t.test(`${method} ${path} ${raw ? JSON.stringify(body) : (JSON.stringify(body) ?? '')}`, async (t) => {
      await expectErrorShape(t, res, expected)
    })
  }
  const textBody = await request(`${admin.url}/admin/keys`, {
    method: 'POST',
    headers: { ...ADMIN, 'content-type': 'text/plain' },
    body: 'name=carol',
  })
  await expectErrorShape(t, textBody, { status: 415, code: 'unsupported_media_type' })
  t.same(admin.changed, [], 'nothing changed, so no key was dropped from the cache')
  t.same(
    // Keys created in the same millisecond list in id order, which is random.
    (await admin.service.keys.listKeys()).map((key) => key.name).sort(),
    ['alice', 'bob'],
    'no refused request created a key',
  )
})
