import { type Kysely, type Migration, type MigrationProvider, sql } from 'kysely'

/**
 * Versioned migrations, in code so the build needs no migration folder at run time. Only column
 * types both SQLite and PostgreSQL accept; a migration, once released, is never edited: add the next.
 */
const MIGRATIONS: Record<string, Migration> = {
  '001_keys_and_usage': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('keys')
        .addColumn('id', 'text', (col) => col.primaryKey())
        .addColumn('name', 'text', (col) => col.notNull().unique())
        .addColumn('prefix', 'text', (col) => col.notNull())
        .addColumn('secret_hash', 'text', (col) => col.notNull().unique())
        .addColumn('created_at', 'text', (col) => col.notNull())
        .addColumn('expires_at', 'text')
        .addColumn('revoked_at', 'text')
        .addColumn('rpm', 'integer')
        .addColumn('tpm', 'integer')
        .addColumn('max_concurrent', 'integer')
        .addColumn('budget_tokens', 'bigint')
        .addColumn('budget_usd', 'double precision')
        .addColumn('budget_period', 'text', (col) => col.notNull())
        .addColumn('models', 'text', (col) => col.notNull().defaultTo(sql`'[]'`))
        .addColumn('metadata', 'text', (col) => col.notNull().defaultTo(sql`'{}'`))
        .execute()
      await db.schema
        .createTable('usage')
        .addColumn('id', 'text', (col) => col.primaryKey())
        .addColumn('time', 'text', (col) => col.notNull())
        .addColumn('key_id', 'text', (col) => col.notNull().references('keys.id'))
        .addColumn('request_id', 'text', (col) => col.notNull())
        .addColumn('model_requested', 'text', (col) => col.notNull())
        .addColumn('model_served', 'text')
        .addColumn('status', 'integer', (col) => col.notNull())
        .addColumn('stream', 'integer', (col) => col.notNull())
        .addColumn('ending', 'text', (col) => col.notNull())
        .addColumn('attempts', 'integer', (col) => col.notNull())
        .addColumn('prompt_tokens', 'bigint')
        .addColumn('completion_tokens', 'bigint')
        .addColumn('total_tokens', 'bigint')
        .addColumn('cost_usd', 'double precision')
        .addColumn('latency_ms', 'integer', (col) => col.notNull())
        .addColumn('ttft_ms', 'integer')
        .execute()
      await db.schema.createIndex('usage_key_time').on('usage').columns(['key_id', 'time']).execute()
      await db.schema.createIndex('usage_time').on('usage').column('time').execute()
    },
    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable('usage').execute()
      await db.schema.dropTable('keys').execute()
    },
  },
}

export const migrationProvider: MigrationProvider = {
  getMigrations: async () => MIGRATIONS,
}
