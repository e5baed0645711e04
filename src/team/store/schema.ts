/**
 * The tables as Kysely sees them. Times are ISO 8601 UTC text (`toISOString()`), which sorts and
 * compares as time in SQLite and PostgreSQL alike; JSON columns are text; booleans are 0/1 integers.
 */
export interface Database {
  keys: KeysTable
  usage: UsageTable
}

export interface KeysTable {
  id: string
  name: string
  /** The secret's first 12 characters, to recognise a key; never enough to use it. */
  prefix: string
  /** Hex SHA-256 of the secret; the secret itself is never stored. */
  secret_hash: string
  created_at: string
  expires_at: string | null
  revoked_at: string | null
  /** null: the key follows team.defaults. */
  rpm: number | null
  tpm: number | null
  max_concurrent: number | null
  /** null: no budget. */
  budget_tokens: number | null
  budget_usd: number | null
  budget_period: string
  /** JSON array of model ids and globs; [] = every model. */
  models: string
  /** JSON object of strings. */
  metadata: string
}

export interface UsageTable {
  id: string
  time: string
  key_id: string
  request_id: string
  model_requested: string
  model_served: string | null
  status: number
  stream: number
  ending: string
  attempts: number
  prompt_tokens: number | null
  completion_tokens: number | null
  total_tokens: number | null
  cost_usd: number | null
  latency_ms: number
  ttft_ms: number | null
}

/** A usage row as written; the id is the store's. */
export type UsageRow = Omit<UsageTable, 'id'>
export type KeyRow = KeysTable
export type KeyRowChanges = Partial<Omit<KeysTable, 'id' | 'secret_hash' | 'prefix' | 'created_at'>>
