import { mkdirSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import BetterSqlite3 from 'better-sqlite3'
import { Kysely, Migrator, SqliteDialect } from 'kysely'
import { createKyselyStore } from './kysely-store.js'
import { migrationProvider } from './migrations.js'
import type { Database } from './schema.js'
import type { TeamStore } from './store.js'
import { parseStoreUrl } from './store-url.js'

export interface OpenStoreOptions {
  /** A relative sqlite: path is relative to this. @default process.cwd() */
  readonly cwd?: string
  /** How long a writer waits for another's lock before SQLITE_BUSY. @default 5000 */
  readonly busyTimeoutMs?: number
}

const DEFAULT_BUSY_TIMEOUT_MS = 5000

/** Opens the store named by team.storeUrl and brings its schema up to date. */
export async function openStore(storeUrl: string, options: OpenStoreOptions = {}): Promise<TeamStore> {
  const location = parseStoreUrl(storeUrl)
  if (location === undefined) throw new Error(`team.storeUrl must be sqlite:<path> or postgres://…, found ${JSON.stringify(storeUrl)}`)
  if (location.kind === 'postgres') {
    throw new Error("the PostgreSQL store is not built yet (it is the fleet issue's work); use team.storeUrl: sqlite:<path> on one node")
  }
  const path = location.path === ':memory:' ? location.path : resolve(options.cwd ?? process.cwd(), location.path)
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
  const sqlite = new BetterSqlite3(path)
  try {
    // WAL: the CLI can read and write while a server holds the file; readers never block the writer.
    sqlite.pragma('journal_mode = WAL')
    sqlite.pragma(`busy_timeout = ${options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS}`)
    sqlite.pragma('foreign_keys = ON')
    sqlite.pragma('synchronous = NORMAL')
  } catch (err: unknown) {
    sqlite.close()
    throw err
  }
  const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }) })
  await migrate(db)
  const prepared = new Map<string, BetterSqlite3.Statement>()
  return createKyselyStore({
    db,
    isUniqueViolation: (err) => (err as { code?: unknown }).code === 'SQLITE_CONSTRAINT_UNIQUE',
    close: () => db.destroy(),
    // A statement prepared once and run per row costs a third of a 500-row INSERT prepared per batch.
    async insertRows(sql, rows) {
      let statement = prepared.get(sql)
      if (statement === undefined) {
        statement = sqlite.prepare(sql)
        prepared.set(sql, statement)
      }
      const insert = statement
      sqlite.transaction(() => {
        for (const row of rows) insert.run(row)
      })()
    },
  })
}

async function migrate(db: Kysely<Database>): Promise<void> {
  const { error, results } = await new Migrator({ db, provider: migrationProvider }).migrateToLatest()
  if (error !== undefined) {
    await db.destroy()
    const failed = results?.find((result) => result.status === 'Error')?.migrationName
    throw new Error(`team store migration ${failed ?? ''} failed: ${(error as Error).message}`)
  }
}
