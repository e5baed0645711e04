import { randomBytes } from 'node:crypto'
import { type Kysely, type RawBuilder, sql } from 'kysely'
import type { Database, KeyRow, KeyRowChanges, UsageRow } from './schema.js'
import { StoreConflictError, type TeamStore, type UsageGrouping, type UsageQuery, type UsageSummaryRow } from './store.js'

/**
 * The store's queries, written once against Kysely's query builder: nothing here is SQLite's own, so
 * the fleet's PostgreSQL dialect runs the same code. The dialect-specific parts (opening, pragmas,
 * what a unique violation looks like) come in from openStore.
 */

export interface KyselyStoreOptions {
  readonly db: Kysely<Database>
  /** True when err is the engine's unique-constraint violation. */
  readonly isUniqueViolation: (err: unknown) => boolean
  readonly close: () => Promise<void>
  /**
   * The engine's fastest way to run one INSERT for many rows (SQLite: one prepared statement in one
   * transaction). The SQL is Kysely's; without this, a batch is multi-row INSERTs through Kysely.
   */
  readonly insertRows?: (sql: string, rows: readonly (readonly unknown[])[]) => Promise<void>
}

/** SQLite allows 32766 bound values per statement; 16 columns × 500 rows stays well below it. */
const USAGE_ROWS_PER_INSERT = 500

export function createKyselyStore(options: KyselyStoreOptions): TeamStore {
  const { db, isUniqueViolation } = options
  const conflict = (err: unknown): never => {
    if (isUniqueViolation(err)) throw new StoreConflictError('a key with this name (or secret) already exists')
    throw err
  }
  let singleRowInsert: { sql: string; columns: readonly (keyof UsageTableRow)[] } | undefined
  return {
    keys: {
      async insertKey(row: KeyRow) {
        await db.insertInto('keys').values(row).execute().catch(conflict)
      },
      listKeys: () => db.selectFrom('keys').selectAll().orderBy('created_at').orderBy('id').execute(),
      findKeyById: (id) => db.selectFrom('keys').selectAll().where('id', '=', id).executeTakeFirst(),
      findKeyByName: (name) => db.selectFrom('keys').selectAll().where('name', '=', name).executeTakeFirst(),
      findKeyBySecretHash: (secretHash) => db.selectFrom('keys').selectAll().where('secret_hash', '=', secretHash).executeTakeFirst(),
      async updateKey(id: string, changes: KeyRowChanges) {
        if (Object.keys(changes).length === 0) return
        await db.updateTable('keys').set(changes).where('id', '=', id).execute().catch(conflict)
      },
    },
    usage: {
      async insertUsage(rows: readonly UsageRow[]) {
        if (rows.length === 0) return
        const values = rows.map((row): UsageTableRow => ({ id: usageId(), ...row }))
        if (options.insertRows !== undefined) {
          singleRowInsert ??= compileSingleRowInsert(db, values[0] as UsageTableRow)
          const { sql, columns } = singleRowInsert
          await options.insertRows(
            sql,
            values.map((row) => columns.map((column) => row[column])),
          )
          return
        }
        await db.transaction().execute(async (trx) => {
          for (let start = 0; start < values.length; start += USAGE_ROWS_PER_INSERT) {
            await trx
              .insertInto('usage')
              .values(values.slice(start, start + USAGE_ROWS_PER_INSERT))
              .execute()
          }
        })
      },
      summarizeUsage: (query) => summarizeUsage(db, query),
      listUsage: (keyId) => {
        let select = db.selectFrom('usage').selectAll()
        if (keyId !== undefined) select = select.where('key_id', '=', keyId)
        return select.orderBy('time').orderBy('id').execute()
      },
    },
    async appliedMigrations() {
      const rows = await sql<{ name: string }>`select name from kysely_migration order by name`.execute(db)
      return rows.rows.map((row) => row.name)
    },
    close: options.close,
  }
}

type UsageTableRow = UsageRow & { readonly id: string }

let lastIdMs = 0
let idSequence = 0
const ID_INSTANCE = randomBytes(6).toString('hex')

/**
 * A usage id that sorts by time (milliseconds, a sequence within one, then this process's random
 * tag): new rows land at the end of the primary-key index. Random ids (UUIDs) made every insert a
 * random B-tree write, and on a table of a few hundred thousand rows an insert cost ~5× more.
 */
function usageId(): string {
  const nowMs = Date.now()
  if (nowMs !== lastIdMs) {
    lastIdMs = nowMs
    idSequence = 0
  }
  idSequence++
  return `use_${nowMs.toString(36).padStart(9, '0')}${idSequence.toString(36).padStart(4, '0')}${ID_INSTANCE}`
}

/** The one-row usage INSERT as Kysely compiles it for this dialect, and its columns in parameter order. */
function compileSingleRowInsert(db: Kysely<Database>, row: UsageTableRow): { sql: string; columns: (keyof UsageTableRow)[] } {
  const compiled = db.insertInto('usage').values(row).compile()
  const columns = Object.keys(row) as (keyof UsageTableRow)[]
  if (compiled.parameters.length !== columns.length) throw new Error('the usage INSERT does not bind one parameter per column')
  return { sql: compiled.sql, columns }
}

function groupExpression(by: UsageGrouping): RawBuilder<string> {
  switch (by) {
    case 'key':
      return sql<string>`${sql.ref('keys.name')}`
    case 'model':
      // A refusal has no served model; it counts under the model that was asked for.
      return sql<string>`coalesce(${sql.ref('usage.model_served')}, ${sql.ref('usage.model_requested')})`
    case 'day':
      return sql<string>`substr(${sql.ref('usage.time')}, 1, 10)`
  }
}

async function summarizeUsage(db: Kysely<Database>, query: UsageQuery): Promise<UsageSummaryRow[]> {
  const group = groupExpression(query.by)
  let select = db.selectFrom('usage').innerJoin('keys', 'keys.id', 'usage.key_id')
  if (query.keyId !== undefined) select = select.where('usage.key_id', '=', query.keyId)
  if (query.since !== undefined) select = select.where('usage.time', '>=', query.since)
  if (query.until !== undefined) select = select.where('usage.time', '<', query.until)
  const rows = await select
    .select((eb) => [
      group.as('group'),
      eb.fn.countAll().as('requests'),
      eb.fn.sum(eb.case().when('usage.status', '>=', 400).then(1).else(0).end()).as('errors'),
      eb.fn.sum('usage.prompt_tokens').as('promptTokens'),
      eb.fn.sum('usage.completion_tokens').as('completionTokens'),
      eb.fn.sum('usage.total_tokens').as('totalTokens'),
      eb.fn.sum('usage.cost_usd').as('costUsd'),
    ])
    .groupBy(group)
    .orderBy(group)
    .execute()
  // Engines differ in how they return aggregates (PostgreSQL: strings for bigint sums).
  return rows.map((row) => ({
    group: String(row.group),
    requests: Number(row.requests),
    errors: Number(row.errors ?? 0),
    promptTokens: Number(row.promptTokens ?? 0),
    completionTokens: Number(row.completionTokens ?? 0),
    totalTokens: Number(row.totalTokens ?? 0),
    costUsd: row.costUsd === null || row.costUsd === undefined ? null : Number(row.costUsd),
  }))
}
