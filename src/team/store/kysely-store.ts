import { randomUUID } from 'node:crypto'
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
}

/** SQLite allows 32766 bound values per statement; 16 columns × 500 rows stays well below it. */
const USAGE_ROWS_PER_INSERT = 500

export function createKyselyStore(options: KyselyStoreOptions): TeamStore {
  const { db, isUniqueViolation } = options
  const conflict = (err: unknown): never => {
    if (isUniqueViolation(err)) throw new StoreConflictError('a key with this name (or secret) already exists')
    throw err
  }
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
        await db.transaction().execute(async (trx) => {
          for (let start = 0; start < rows.length; start += USAGE_ROWS_PER_INSERT) {
            const values = rows.slice(start, start + USAGE_ROWS_PER_INSERT).map((row) => ({ ...row, id: `use_${randomUUID()}` }))
            await trx.insertInto('usage').values(values).execute()
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
