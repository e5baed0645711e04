import { createServer } from 'node:net'
import t from 'tap'
import { openStore } from '../src/team/store/open-store.js'
import { openTeamService } from '../src/team/team-service.js'
import { freshDatabase, PG_HOST, PG_PORT, postgresSkip } from './helpers/postgres.js'
import { NOW, storeCases, usageRecord } from './helpers/team-store-cases.js'

/**
 * The PostgreSQL store (team.storeUrl: postgres://…) on the real server at 127.0.0.1:5432, each
 * test on a database of its own: the same behavioural cases as SQLite, then what only PostgreSQL has
 * (the pool, migrations under an advisory lock when replicas start together).
 */

// A fresh object per test: tap writes the call site into the options object it is given.
const options = { skip: await postgresSkip(t) }

storeCases(t, freshDatabase, options)

t.test('migrations run once, are idempotent on reopen; the tables and indexes are there', { ...options }, async (t) => {
  const { storeUrl, rows } = await freshDatabase(t)
  const first = await openStore(storeUrl)
  t.same(await first.appliedMigrations(), ['001_keys_and_usage'])
  await first.close()
  const again = await openStore(storeUrl)
  t.same(await again.appliedMigrations(), ['001_keys_and_usage'], 'reopening applies nothing twice')
  await again.close()
  const tables = await rows(
    "select tablename from pg_tables where schemaname = 'public' and tablename not like 'kysely_%' order by tablename",
  )
  t.same(
    tables.map((row) => row.tablename),
    ['keys', 'usage'],
  )
  const indexes = await rows(
    "select indexname from pg_indexes where tablename = 'usage' and indexname in ('usage_key_time', 'usage_time') order by indexname",
  )
  t.same(
    indexes.map((row) => row.indexname),
    ['usage_key_time', 'usage_time'],
  )
})

t.test('replicas starting together on an empty database: all open, each migration applied once', { ...options }, async (t) => {
  const { storeUrl, rows } = await freshDatabase(t)
  const stores = await Promise.all(Array.from({ length: 4 }, () => openStore(storeUrl)))
  t.teardown(() => Promise.all(stores.map((store) => store.close())))
  for (const store of stores) t.same(await store.appliedMigrations(), ['001_keys_and_usage'])
  const applied = await rows('select name, count(*)::int as n from kysely_migration group by name')
  t.same(applied, [{ name: '001_keys_and_usage', n: 1 }])
  // Nothing is left holding the migration lock: a fifth replica opens at once.
  const fifth = await openStore(storeUrl)
  await fifth.close()
})

t.test('bigint columns and aggregates come back as numbers, not strings', { ...options }, async (t) => {
  const { storeUrl } = await freshDatabase(t)
  const team = await openTeamService(storeUrl, { now: () => NOW })
  t.teardown(() => team.close())
  const { record } = await team.keys.createKey({ name: 'gina', budgetTokens: 9_000_000_000 })
  t.equal((await team.keys.getKey('gina')).budgetTokens, 9_000_000_000)
  t.equal(typeof (await team.store.keys.findKeyById(record.id))?.budget_tokens, 'number')
  await team.usage.recordUsage([usageRecord({ keyId: record.id, time: NOW, promptTokens: 7, completionTokens: 8, totalTokens: 15 })])
  const [row] = await team.store.usage.listUsage(record.id)
  t.strictSame(
    [row?.prompt_tokens, row?.completion_tokens, row?.total_tokens, row?.status, row?.stream, row?.cost_usd],
    [7, 8, 15, 200, 0, 0.001],
    'strictly numbers',
  )
  const [summary] = await team.store.usage.summarizeUsage({ by: 'key' })
  t.strictSame(summary, { group: 'gina', requests: 1, errors: 0, promptTokens: 7, completionTokens: 8, totalTokens: 15, costUsd: 0.001 })
})

t.test('team.storePoolSize bounds the connections one store opens', { ...options }, async (t) => {
  const { storeUrl, name, rows } = await freshDatabase(t)
  const store = await openStore(storeUrl, { poolSize: 2 })
  t.teardown(() => store.close())
  await Promise.all(Array.from({ length: 12 }, () => store.keys.listKeys()))
  const [open] = await rows(`select count(*)::int as n from pg_stat_activity where datname = '${name}' and pid <> pg_backend_pid()`)
  t.equal(open?.n, 2, 'twelve queries at once, two connections')
  const single = await openStore(storeUrl, { poolSize: 1 })
  t.teardown(() => single.close())
  t.same(await single.keys.listKeys(), [], 'a pool of one opens too (the migration lock has its own connection)')
})

t.test('an unreachable server: openStore fails with the URL shown without its password', async (t) => {
  // A port that was free a moment ago: nothing listens there, so the connection is refused at once.
  const port = await new Promise<number>((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0))
    })
  })
  const error = await openStore(`postgres://gw:hunter2secret@127.0.0.1:${port}/gw`).then(
    () => undefined,
    (err: unknown) => err as Error,
  )
  t.ok(error, 'it rejects')
  t.match(
    error?.message,
    new RegExp(`cannot open the PostgreSQL team store postgres://gw:\\*\\*\\*@127\\.0\\.0\\.1:${port}/gw: .*ECONNREFUSED`),
  )
  t.notMatch(error?.message, /hunter2secret/)
})

t.comment(`PostgreSQL at ${PG_HOST}:${PG_PORT}`)
