import { mkdirSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import BetterSqlite3 from 'better-sqlite3'
import { Kysely, Migrator, PostgresDialect, SqliteDialect } from 'kysely'
import pg from 'pg'
import { createKyselyStore } from './kysely-store.js'
import { migrationProvider } from './migrations.js'
import type { Database } from './schema.js'
import type { TeamStore } from './store.js'
import { parseStoreUrl, shownUrl } from './store-url.js'

export interface OpenStoreOptions {
  /** A relative sqlite: path is relative to this. @default process.cwd() */
  readonly cwd?: string
  /** How long a writer waits for another's lock before SQLITE_BUSY. @default 5000 */
  readonly busyTimeoutMs?: number
  /** PostgreSQL: connections in the pool (team.storePoolSize). @default 10 */
  readonly poolSize?: number
}

const DEFAULT_BUSY_TIMEOUT_MS = 5000
const DEFAULT_POOL_SIZE = 10

/** Opens the store named by team.storeUrl and brings its schema up to date. */
export async function openStore(storeUrl: string, options: OpenStoreOptions = {}): Promise<TeamStore> {
  const location = parseStoreUrl(storeUrl)
  if (location === undefined)
    throw new Error(`team.storeUrl must be sqlite:<path> or postgres://…, found ${JSON.stringify(shownUrl(storeUrl))}`)
  if (location.kind === 'postgres') return openPostgresStore(location.url, options)
  return openSqliteStore(location.path, options)
}

async function openSqliteStore(locationPath: string, options: OpenStoreOptions): Promise<TeamStore> {
  const path = locationPath === ':memory:' ? locationPath : resolve(options.cwd ?? process.cwd(), locationPath)
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
  await migrate(db).catch(async (err: unknown) => {
    await db.destroy()
    throw err
  })
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

/**
 * The pool's own type parsers (not pg's global ones): int8 (a bigint column, count(*)) as a number.
 * Token counts stay far below 2^53; numeric (sum of a bigint) stays a string and kysely-store converts it.
 */
const INT8_OID = 20
const PG_TYPES: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === INT8_OID && format !== 'binary'
      ? (value: string) => Number(value)
      : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
}

/** A connection attempt gives up after this, so an unreachable server fails a key lookup (503) instead of hanging it. */
const PG_CONNECT_TIMEOUT_MS = 5000

/** pg_advisory_lock's key for the migrations: one constant, so every replica waits on the same lock. */
const MIGRATION_LOCK_KEY = 7_209_463_118_805_412n

async function openPostgresStore(url: string, options: OpenStoreOptions): Promise<TeamStore> {
  const pool = new pg.Pool({
    connectionString: url,
    max: options.poolSize ?? DEFAULT_POOL_SIZE,
    types: PG_TYPES,
    connectionTimeoutMillis: PG_CONNECT_TIMEOUT_MS,
  })
  // An idle connection the server dropped (a restart, a failover) is an 'error' event, and unhandled
  // it would end the process. The pool replaces the connection; the next query's failure is reported.
  pool.on('error', () => {})
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) })
  try {
    await migrateUnderLock(url, db)
  } catch (err: unknown) {
    await db.destroy()
    throw new Error(`cannot open the PostgreSQL team store ${shownUrl(url)}: ${(err as Error).message}`, { cause: err })
  }
  return createKyselyStore({
    db,
    isUniqueViolation: (err) => (err as { code?: unknown }).code === '23505',
    close: () => db.destroy(),
  })
}

/**
 * Replicas started together each run the migrations; a session-level advisory lock, held on one
 * dedicated connection (outside the pool, so a pool of one still has its connection), makes them
 * take turns: the first applies them, the others find nothing left to do.
 */
async function migrateUnderLock(url: string, db: Kysely<Database>): Promise<void> {
  const lock = new pg.Client({ connectionString: url, connectionTimeoutMillis: PG_CONNECT_TIMEOUT_MS })
  lock.on('error', () => {})
  await lock.connect()
  try {
    await lock.query('select pg_advisory_lock($1)', [MIGRATION_LOCK_KEY.toString()])
    try {
      await migrate(db)
    } finally {
      await lock.query('select pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY.toString()])
    }
  } finally {
    // Ending the session releases the lock too, should the unlock itself have failed.
    await lock.end()
  }
}

async function migrate(db: Kysely<Database>): Promise<void> {
  const { error, results } = await new Migrator({ db, provider: migrationProvider }).migrateToLatest()
  if (error !== undefined) {
    const failed = results?.find((result) => result.status === 'Error')?.migrationName
    throw new Error(`team store migration ${failed ?? ''} failed: ${(error as Error).message}`)
  }
}
