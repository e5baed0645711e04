import type { Test } from 'tap'
import { TeamError } from '../../src/team/errors.js'
import { effectiveLimits, hashSecret, keyStatus } from '../../src/team/keys.js'
import { openTeamService } from '../../src/team/team-service.js'
import type { UsageRecord } from '../../src/team/usage.js'

/**
 * The store's behavioural cases, written once and run against every engine: test/team-store.test.ts
 * runs them on SQLite files, test/team-pg-store.test.ts on a fresh PostgreSQL database per test.
 */

export interface StoreFixture {
  readonly storeUrl: string
  /** A query on a connection of the test's own, beside the store: what is really stored. */
  readonly rows: (sql: string) => Promise<Array<Record<string, unknown>>>
}

/** A fresh, empty store for one test, removed in that test's teardown. */
export type OpenStoreFixture = (t: Test) => Promise<StoreFixture>

export const NOW = new Date('2026-12-01T10:00:00.000Z')

export const usageRecord = (overrides: Partial<UsageRecord> & Pick<UsageRecord, 'keyId' | 'time'>): UsageRecord => ({
  requestId: 'req-1',
  modelRequested: 'google/gemini-3.5-flash',
  modelServed: 'google/gemini-3.5-flash',
  status: 200,
  stream: false,
  ending: 'complete',
  attempts: 1,
  promptTokens: 10,
  completionTokens: 50,
  totalTokens: 60,
  costUsd: 0.001,
  latencyMs: 120,
  ttftMs: null,
  ...overrides,
})

/** options is copied per test: tap writes each call site into the options object it is given. */
export function storeCases(t: Test, open: OpenStoreFixture, options: { skip?: string | false } = {}): void {
  t.test('keys: create, get by id or name, update, revoke; the name is unique', { ...options }, async (t) => {
    const { storeUrl } = await open(t)
    let clock = NOW
    const team = await openTeamService(storeUrl, { now: () => clock })
    t.teardown(() => team.close())
    const { record, secret } = await team.keys.createKey({ name: 'alice', rpm: 5, models: ['google/*', 'openai/gpt-5'], expiresAt: '30d' })
    t.match(secret, /^tpk_[A-Za-z0-9_-]{43}$/, 'tpk_ + 32 random bytes base64url')
    t.match(record.id, /^key_[A-Za-z0-9_-]{16}$/)
    t.equal(record.prefix, secret.slice(0, 12))
    t.same(
      { ...record },
      {
        id: record.id,
        name: 'alice',
        prefix: secret.slice(0, 12),
        createdAt: '2026-12-01T10:00:00.000Z',
        expiresAt: '2026-12-31T10:00:00.000Z',
        revokedAt: null,
        rpm: 5,
        tpm: null,
        maxConcurrent: null,
        budgetTokens: null,
        budgetUsd: null,
        budgetPeriod: 'total',
        models: ['google/*', 'openai/gpt-5'],
        metadata: {},
      },
    )
    t.same(await team.keys.getKey('alice'), record)
    t.same(await team.keys.getKey(record.id), record)
    t.same(effectiveLimits(record, { rpm: 100, tpm: 1000, maxConcurrent: 3 }), { rpm: 5, tpm: 1000, maxConcurrent: 3 })

    await t.rejects(team.keys.createKey({ name: 'alice' }), {
      name: 'TeamError',
      kind: 'conflict',
      message: /a key named "alice" already exists/,
    })
    await t.rejects(team.keys.createKey({}), { kind: 'invalid', message: /name is required/ })

    clock = new Date('2026-12-02T00:00:00.000Z')
    const updated = await team.keys.updateKey('alice', {
      tpm: 1000,
      budgetTokens: 100,
      budgetUsd: 2.5,
      budgetPeriod: 'month',
      expiresAt: '2027-01-01',
      metadata: { team: 'ml' },
    })
    t.equal(updated.tpm, 1000)
    t.equal(updated.rpm, 5, 'fields not given are kept')
    t.equal(updated.expiresAt, '2027-01-01T00:00:00.000Z')
    t.same(updated.metadata, { team: 'ml' })
    t.same(await team.keys.getKey(record.id), updated, 'the update is stored')
    await team.keys.createKey({ name: 'bob' })
    await t.rejects(team.keys.updateKey('bob', { name: 'alice' }), { name: 'TeamError', kind: 'conflict' })
    t.equal((await team.keys.updateKey('bob', { name: 'robert' })).name, 'robert', 'a key can be renamed')
    t.same((await team.keys.updateKey('robert', { rpm: 7 })).rpm, 7)
    t.equal((await team.keys.updateKey('robert', { rpm: null })).rpm, null, 'null returns a limit to team.defaults')

    t.equal(keyStatus(updated, clock), 'active')
    t.equal(keyStatus(updated, new Date('2027-01-01T00:00:00.000Z')), 'expired')
    const revoked = await team.keys.revokeKey(record.id)
    t.equal(revoked.revokedAt, '2026-12-02T00:00:00.000Z')
    t.equal(keyStatus(revoked, clock), 'revoked')
    clock = new Date('2026-12-03T00:00:00.000Z')
    t.equal((await team.keys.revokeKey('alice')).revokedAt, '2026-12-02T00:00:00.000Z', 'revoking twice keeps the first time')
    t.same(
      (await team.keys.listKeys()).map((key) => key.name),
      ['alice', 'robert'],
    )
    await t.rejects(team.keys.getKey('nobody'), { kind: 'not_found', message: /no key with the name "nobody"/ })
    await t.rejects(team.keys.revokeKey('key_missing'), { kind: 'not_found', message: /no key with the id "key_missing"/ })
  })

  t.test('keys: each field is validated with a clear error', { ...options }, async (t) => {
    const { storeUrl } = await open(t)
    const team = await openTeamService(storeUrl, { now: () => NOW })
    t.teardown(() => team.close())
    const invalid: Array<[object, RegExp]> = [
      [{ name: '' }, /name must be 1 to 64/],
      [{ name: 'a b' }, /name must be 1 to 64/],
      [{ name: 'key_x' }, /must not start with key_ or tpk_/],
      [{ name: 'x', rpm: -1 }, /rpm must be a whole number >= 0/],
      [{ name: 'x', tpm: 1.5 }, /tpm must be a whole number >= 0/],
      [{ name: 'x', maxConcurrent: '2' }, /maxConcurrent must be a whole number/],
      [{ name: 'x', budgetTokens: -5 }, /budgetTokens must be a whole number/],
      [{ name: 'x', budgetUsd: -0.01 }, /budgetUsd must be a number >= 0/],
      [{ name: 'x', budgetPeriod: 'year' }, /budgetPeriod must be one of day, week, month, total, found "year"/],
      [{ name: 'x', models: 'google/*' }, /models must be a list/],
      [{ name: 'x', models: ['google/*', 'has space'] }, /models must be a list/],
      [{ name: 'x', expiresAt: 'soon' }, /expiresAt must be a span such as 30d, 12h or 2w, or a date such as 2027-01-01, found "soon"/],
      [{ name: 'x', expiresAt: '2027-13-45' }, /expiresAt must be a span/],
      [{ name: 'x', metadata: { a: 1 } }, /metadata must be a map of at most 50 string values/],
      [{ name: 'x', colour: 'red' }, /unknown key field "colour"/],
    ]
    for (const [fields, message] of invalid) {
      await t.rejects(team.keys.createKey(fields), { name: 'TeamError', kind: 'invalid', message }, JSON.stringify(fields))
    }
    t.same(await team.keys.listKeys(), [], 'nothing invalid was stored')
    t.equal((await team.keys.createKey({ name: 'x', expiresAt: '12h' })).record.expiresAt, '2026-12-01T22:00:00.000Z')
    t.ok(new TeamError('invalid', 'm') instanceof Error)
  })

  t.test('findBySecret hashes the secret and looks the hash up; the secret and hash are in no record', { ...options }, async (t) => {
    const { storeUrl, rows } = await open(t)
    const team = await openTeamService(storeUrl, { now: () => NOW })
    t.teardown(() => team.close())
    const { record, secret } = await team.keys.createKey({ name: 'carol', models: ['*'] })
    const other = await team.keys.createKey({ name: 'dave' })
    t.same(await team.keys.findBySecret(secret), record)
    t.same(await team.keys.findBySecret(other.secret), other.record)
    t.equal(await team.keys.findBySecret(`${secret.slice(0, -1)}x`), undefined, 'one character off: no key')
    t.equal(await team.keys.findBySecret('sk-not-a-gateway-key'), undefined)

    const stored = await rows('select * from keys')
    t.notMatch(JSON.stringify(stored), secret, 'the secret itself is never stored')
    t.match(JSON.stringify(stored), hashSecret(secret), 'its SHA-256 is (non-vacuous: the canary can be found)')

    const hash = hashSecret(secret)
    const outputs: unknown[] = [
      record,
      await team.keys.listKeys(),
      await team.keys.getKey('carol'),
      await team.keys.updateKey('carol', { rpm: 1 }),
    ]
    outputs.push(await team.keys.revokeKey('carol'), await team.keys.findBySecret(secret))
    for (const output of outputs) {
      const json = JSON.stringify(output)
      t.notOk(json.includes(secret) || json.includes(hash), 'no secret or hash in a record or listing')
      t.notMatch(json, /secret|hash/i, 'no field named after them either')
    }
  })

  t.test('usage: batch insert, and each grouping with since/until and a key filter', { ...options }, async (t) => {
    const { storeUrl, rows } = await open(t)
    const team = await openTeamService(storeUrl, { now: () => NOW })
    t.teardown(() => team.close())
    const alice = (await team.keys.createKey({ name: 'alice' })).record
    const bob = (await team.keys.createKey({ name: 'bob' })).record
    const day1 = new Date('2026-12-01T09:00:00.000Z')
    const day2 = new Date('2026-12-02T23:59:59.999Z')
    const day3 = new Date('2026-12-03T00:00:00.000Z')
    await team.usage.recordUsage([
      usageRecord({ keyId: alice.id, time: day1 }),
      usageRecord({ keyId: alice.id, time: day2, stream: true, ttftMs: 40, modelServed: 'anthropic/claude-4.6-sonnet', attempts: 2 }),
      usageRecord({
        keyId: alice.id,
        time: day2,
        status: 429,
        modelServed: null,
        ending: 'error',
        promptTokens: null,
        completionTokens: null,
        totalTokens: null,
        costUsd: null,
      }),
      usageRecord({ keyId: bob.id, time: day3, costUsd: null, ending: 'cut', promptTokens: 5, completionTokens: null, totalTokens: null }),
    ])
    t.equal(Number((await rows('select count(*) as n from usage'))[0]?.n), 4, 'one row per record')

    t.same(await team.usage.summarizeUsage({ by: 'key' }), [
      { group: 'alice', requests: 3, errors: 1, promptTokens: 20, completionTokens: 100, totalTokens: 120, costUsd: 0.002 },
      { group: 'bob', requests: 1, errors: 0, promptTokens: 5, completionTokens: 0, totalTokens: 0, costUsd: null },
    ])
    t.same(await team.usage.summarizeUsage({ by: 'model' }), [
      {
        group: 'anthropic/claude-4.6-sonnet',
        requests: 1,
        errors: 0,
        promptTokens: 10,
        completionTokens: 50,
        totalTokens: 60,
        costUsd: 0.001,
      },
      { group: 'google/gemini-3.5-flash', requests: 3, errors: 1, promptTokens: 15, completionTokens: 50, totalTokens: 60, costUsd: 0.001 },
    ])
    t.same(
      (await team.usage.summarizeUsage({ by: 'day' })).map((row) => [row.group, row.requests]),
      [
        ['2026-12-01', 1],
        ['2026-12-02', 2],
        ['2026-12-03', 1],
      ],
    )
    t.same(
      (await team.usage.summarizeUsage({ by: 'day', since: new Date('2026-12-02T00:00:00.000Z'), until: day3 })).map((row) => row.group),
      ['2026-12-02'],
      'since inclusive, until exclusive',
    )
    t.same(
      (await team.usage.summarizeUsage({ by: 'key', key: 'bob' })).map((row) => row.group),
      ['bob'],
    )
    t.same(await team.usage.summarizeUsage({ by: 'key', since: new Date('2027-01-01') }), [], 'nothing in range: no rows')
    await t.rejects(team.usage.summarizeUsage({ by: 'key', key: 'nobody' }), { name: 'TeamError', kind: 'not_found' })
    await t.rejects(team.usage.summarizeUsage({ by: 'hour' as 'day' }), { kind: 'invalid', message: /by must be one of key, model, day/ })

    const many = Array.from({ length: 1200 }, (_, i) => usageRecord({ keyId: bob.id, time: day3, requestId: `bulk-${i}` }))
    await team.usage.recordUsage(many)
    t.equal(
      (await team.usage.summarizeUsage({ by: 'key', key: 'bob' }))[0]?.requests,
      1201,
      'a batch larger than one statement is written whole',
    )
    await t.rejects(team.usage.recordUsage([usageRecord({ keyId: 'key_unknown', time: day1 })]), 'a record for no key is refused')
  })

  t.test('keys and usage survive close and reopen', { ...options }, async (t) => {
    const { storeUrl } = await open(t)
    const first = await openTeamService(storeUrl, { now: () => NOW })
    const { record, secret } = await first.keys.createKey({ name: 'erin', tpm: 9 })
    await first.usage.recordUsage([usageRecord({ keyId: record.id, time: NOW })])
    await first.close()
    const second = await openTeamService(storeUrl)
    t.teardown(() => second.close())
    t.same(await second.keys.getKey('erin'), record)
    t.same(await second.keys.findBySecret(secret), record)
    t.equal((await second.usage.summarizeUsage({ by: 'key' }))[0]?.requests, 1)
  })

  t.test('a second connection on the same store (the CLI beside a running server) sees and makes writes', { ...options }, async (t) => {
    const { storeUrl } = await open(t)
    const server = await openTeamService(storeUrl)
    const cli = await openTeamService(storeUrl)
    t.teardown(async () => {
      await server.close()
      await cli.close()
    })
    const created = await cli.keys.createKey({ name: 'frank' })
    t.same(await server.keys.findBySecret(created.secret), created.record, 'a key the CLI creates is found by the server')
    // One after the other: in one process, better-sqlite3's busy wait is synchronous, so a second
    // connection waiting on the first's open transaction would block the very thread that commits it.
    // Across processes (the CLI beside a server) the busy timeout simply waits.
    await server.usage.recordUsage([usageRecord({ keyId: created.record.id, time: NOW })])
    await cli.keys.updateKey('frank', { rpm: 3 })
    t.equal((await server.keys.getKey('frank')).rpm, 3)
    t.equal((await cli.usage.summarizeUsage({ by: 'key' }))[0]?.requests, 1)
  })
}
