import type { KeyRow, KeyRowChanges, UsageRow, UsageTable } from './schema.js'

/**
 * The team store as the service sees it: small interfaces, so the fleet's PostgreSQL store slots in
 * behind the same service and the request path never sees a query.
 */
export interface KeyStore {
  /** Throws StoreConflictError when the name or the secret hash is taken. */
  insertKey(row: KeyRow): Promise<void>
  listKeys(): Promise<KeyRow[]>
  findKeyById(id: string): Promise<KeyRow | undefined>
  findKeyByName(name: string): Promise<KeyRow | undefined>
  findKeyBySecretHash(secretHash: string): Promise<KeyRow | undefined>
  /** Throws StoreConflictError when a new name is taken. */
  updateKey(id: string, changes: KeyRowChanges): Promise<void>
}

export type UsageGrouping = 'key' | 'model' | 'day'

export interface UsageQuery {
  readonly keyId?: string | undefined
  /** Inclusive, ISO 8601. */
  readonly since?: string | undefined
  /** Exclusive, ISO 8601. */
  readonly until?: string | undefined
  readonly by: UsageGrouping
}

/** The admin API's usage row. */
export interface UsageSummaryRow {
  readonly group: string
  readonly requests: number
  /** Requests answered with a status >= 400. */
  readonly errors: number
  readonly promptTokens: number
  readonly completionTokens: number
  readonly totalTokens: number
  /** null when no request of the group had a known price. */
  readonly costUsd: number | null
}

export interface UsageStore {
  insertUsage(rows: readonly UsageRow[]): Promise<void>
  summarizeUsage(query: UsageQuery): Promise<UsageSummaryRow[]>
  /** Every record (of one key), oldest first: for exports and tests, not the request path. */
  listUsage(keyId?: string): Promise<UsageTable[]>
}

export interface TeamStore {
  readonly keys: KeyStore
  readonly usage: UsageStore
  /** Migrations applied, oldest first (for tests and --check-config). */
  appliedMigrations(): Promise<string[]>
  close(): Promise<void>
}

export class StoreConflictError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'StoreConflictError'
  }
}
