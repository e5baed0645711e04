import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import BetterSqlite3 from 'better-sqlite3'
import t, { type Test } from 'tap'
import type { KeyRecord } from '../src/team/keys.js'
import { modelAllowed } from '../src/team/model-allow.js'
import { openStore } from '../src/team/store/open-store.js'
import { storeCases } from './helpers/team-store-cases.js'

/**
 * The embedded store and the keys/usage service over it, on real SQLite files in a temp dir. The
 * behavioural cases are shared with the PostgreSQL store (test/helpers/team-store-cases.ts).
 */

function tempStore(t: Test) {
  const dir = mkdtempSync(join(tmpdir(), 'toprouter-team-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return { dir, storeUrl: `sqlite:${join(dir, 'team.db')}`, path: join(dir, 'team.db') }
}

t.test('migrations run once, are idempotent on reopen, and the file is in WAL mode', async (t) => {
  const { storeUrl, path } = tempStore(t)
  const first = await openStore(storeUrl)
  t.same(await first.appliedMigrations(), ['001_keys_and_usage'])
  await first.close()
  const again = await openStore(storeUrl)
  t.same(await again.appliedMigrations(), ['001_keys_and_usage'], 'reopening applies nothing twice')
  await again.close()
  const raw = new BetterSqlite3(path, { readonly: true })
  t.teardown(() => raw.close())
  t.equal(raw.pragma('journal_mode', { simple: true }), 'wal')
  const tables = raw.prepare("select name from sqlite_master where type = 'table' order by name").all() as Array<{ name: string }>
  t.same(
    tables.map((row) => row.name).filter((name) => !name.startsWith('kysely_')),
    ['keys', 'usage'],
  )
  const indexes = raw.prepare("select name from sqlite_master where type = 'index' and name like 'usage_%'").all() as Array<{
    name: string
  }>
  t.same(indexes.map((row) => row.name).sort(), ['usage_key_time', 'usage_time'])
})

t.test('a relative sqlite: path is relative to the working directory given', async (t) => {
  const { dir } = tempStore(t)
  const store = await openStore('sqlite:nested/relative.db', { cwd: dir })
  await store.close()
  const raw = new BetterSqlite3(join(dir, 'nested', 'relative.db'), { readonly: true, fileMustExist: true })
  raw.close()
  await t.rejects(openStore('mysql://db'), /team\.storeUrl must be/)
})

t.test('modelAllowed: exact ids and globs; an empty list allows everything', async (t) => {
  const key = (models: string[]) => ({ models }) as Pick<KeyRecord, 'models'>
  t.ok(modelAllowed(key([]), 'any/model'))
  const list = key(['google/*', 'openai/gpt-5', '*-mini', 'x/a?c'])
  t.ok(modelAllowed(list, 'google/gemini-3.5-flash'))
  t.ok(modelAllowed(list, 'openai/gpt-5'))
  t.notOk(modelAllowed(list, 'openai/gpt-5.1'), 'an exact id is exact')
  t.ok(modelAllowed(list, 'openai/o4-mini'))
  t.ok(modelAllowed(list, 'x/abc'))
  t.notOk(modelAllowed(list, 'x/abbc'))
  t.notOk(modelAllowed(list, 'anthropic/claude-4.6-sonnet'))
  t.notOk(modelAllowed(key(['google.*']), 'googleXfoo'), 'a dot is a dot, not any character')
})

storeCases(t, async (t: Test) => {
  const { storeUrl, path } = tempStore(t)
  return {
    storeUrl,
    async rows(sql: string) {
      const raw = new BetterSqlite3(path, { readonly: true })
      try {
        return raw.prepare(sql).all() as Array<Record<string, unknown>>
      } finally {
        raw.close()
      }
    },
  }
})
