import { randomBytes as cryptoRandomBytes, hash } from 'node:crypto'
import { TeamError } from './errors.js'
import { type BudgetPeriod, DEFAULT_BUDGET_PERIOD, type KeyFields, keyFieldsToColumns } from './key-fields.js'
import type { KeyRow } from './store/schema.js'
import { type KeyStore, StoreConflictError } from './store/store.js'

/**
 * Member keys: created, listed, changed and revoked by the CLI and the admin API, looked up by
 * secret on the request path. A KeyRecord is what leaves this module: it never holds the secret
 * or its hash.
 */

export interface KeyRecord {
  readonly id: string
  readonly name: string
  /** The secret's first 12 characters. */
  readonly prefix: string
  readonly createdAt: string
  readonly expiresAt: string | null
  readonly revokedAt: string | null
  /** null: team.defaults applies (see effectiveLimits); 0: unlimited. */
  readonly rpm: number | null
  readonly tpm: number | null
  readonly maxConcurrent: number | null
  /** null: no budget. */
  readonly budgetTokens: number | null
  readonly budgetUsd: number | null
  readonly budgetPeriod: BudgetPeriod
  /** Exact ids and globs; empty = every model. */
  readonly models: readonly string[]
  readonly metadata: Readonly<Record<string, string>>
}

export type KeyStatus = 'active' | 'revoked' | 'expired'

export interface KeyLimits {
  readonly rpm: number
  readonly tpm: number
  readonly maxConcurrent: number
}

export interface KeyServiceDeps {
  readonly keys: KeyStore
  /** @default () => new Date() */
  readonly now?: () => Date
  /** @default crypto.randomBytes */
  readonly randomBytes?: (size: number) => Buffer
}

export interface KeyService {
  /** The secret is returned here and nowhere else, ever. */
  createKey(fields: KeyFields): Promise<{ record: KeyRecord; secret: string }>
  listKeys(): Promise<KeyRecord[]>
  /** Throws TeamError not_found. */
  getKey(idOrName: string): Promise<KeyRecord>
  updateKey(idOrName: string, fields: KeyFields): Promise<KeyRecord>
  /** Idempotent: a revoked key keeps its first revokedAt. */
  revokeKey(idOrName: string): Promise<KeyRecord>
  /** The key a presented secret belongs to, whatever its status; undefined when none. */
  findBySecret(secret: string): Promise<KeyRecord | undefined>
  /** The same, for a secret already hashed (the request path hashes once, for its cache too). */
  findBySecretHash(secretHash: string): Promise<KeyRecord | undefined>
}

export const SECRET_PREFIX = 'tpk_'
const SECRET_BYTES = 32
const ID_BYTES = 12
const PREFIX_CHARS = 12

export function hashSecret(secret: string): string {
  // crypto.hash: the one-shot form, without a Hash object per request.
  return hash('sha256', secret, 'hex')
}

export function keyStatus(record: KeyRecord, now: Date): KeyStatus {
  if (record.revokedAt !== null) return 'revoked'
  if (record.expiresAt !== null && Date.parse(record.expiresAt) <= now.getTime()) return 'expired'
  return 'active'
}

/** The limits a request is held to: the key's own, else team.defaults (0 = unlimited either way). */
export function effectiveLimits(record: KeyRecord, defaults: KeyLimits): KeyLimits {
  return {
    rpm: record.rpm ?? defaults.rpm,
    tpm: record.tpm ?? defaults.tpm,
    maxConcurrent: record.maxConcurrent ?? defaults.maxConcurrent,
  }
}

export function createKeyService(deps: KeyServiceDeps): KeyService {
  const store = deps.keys
  const now = deps.now ?? (() => new Date())
  const randomBytes = deps.randomBytes ?? cryptoRandomBytes

  const findRow = async (idOrName: string): Promise<KeyRow> => {
    const row = idOrName.startsWith('key_') ? await store.findKeyById(idOrName) : await store.findKeyByName(idOrName)
    if (row === undefined) throw new TeamError('not_found', `no key with the ${idOrName.startsWith('key_') ? 'id' : 'name'} "${idOrName}"`)
    return row
  }
  const nameConflict = (name: unknown) => (err: unknown) => {
    if (err instanceof StoreConflictError) throw new TeamError('conflict', `a key named "${String(name)}" already exists`)
    throw err
  }

  return {
    async createKey(fields) {
      if (fields.name === undefined) throw new TeamError('invalid', 'name is required')
      const createdAt = now()
      const columns = keyFieldsToColumns(fields, createdAt)
      const secret = SECRET_PREFIX + randomBytes(SECRET_BYTES).toString('base64url')
      const row: KeyRow = {
        id: `key_${randomBytes(ID_BYTES).toString('base64url')}`,
        name: columns.name ?? '',
        prefix: secret.slice(0, PREFIX_CHARS),
        secret_hash: hashSecret(secret),
        created_at: createdAt.toISOString(),
        expires_at: columns.expires_at ?? null,
        revoked_at: null,
        rpm: columns.rpm ?? null,
        tpm: columns.tpm ?? null,
        max_concurrent: columns.max_concurrent ?? null,
        budget_tokens: columns.budget_tokens ?? null,
        budget_usd: columns.budget_usd ?? null,
        budget_period: columns.budget_period ?? DEFAULT_BUDGET_PERIOD,
        models: columns.models ?? '[]',
        metadata: columns.metadata ?? '{}',
      }
      await store.insertKey(row).catch(nameConflict(row.name))
      return { record: toKeyRecord(row), secret }
    },
    async listKeys() {
      return (await store.listKeys()).map(toKeyRecord)
    },
    async getKey(idOrName) {
      return toKeyRecord(await findRow(idOrName))
    },
    async updateKey(idOrName, fields) {
      const row = await findRow(idOrName)
      const columns = keyFieldsToColumns(fields, now())
      await store.updateKey(row.id, columns).catch(nameConflict(columns.name))
      return toKeyRecord({ ...row, ...columns })
    },
    async revokeKey(idOrName) {
      const row = await findRow(idOrName)
      if (row.revoked_at !== null) return toKeyRecord(row)
      const revokedAt = now().toISOString()
      await store.updateKey(row.id, { revoked_at: revokedAt })
      return toKeyRecord({ ...row, revoked_at: revokedAt })
    },
    async findBySecret(secret) {
      if (!secret.startsWith(SECRET_PREFIX)) return undefined
      return this.findBySecretHash(hashSecret(secret))
    },
    async findBySecretHash(secretHash) {
      const row = await store.findKeyBySecretHash(secretHash)
      return row === undefined ? undefined : toKeyRecord(row)
    },
  }
}

/** The only way a row leaves the service: secret_hash is dropped here. */
function toKeyRecord(row: KeyRow): KeyRecord {
  return Object.freeze({
    id: row.id,
    name: row.name,
    prefix: row.prefix,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    revokedAt: row.revoked_at,
    rpm: row.rpm,
    tpm: row.tpm,
    maxConcurrent: row.max_concurrent,
    budgetTokens: row.budget_tokens,
    budgetUsd: row.budget_usd,
    budgetPeriod: row.budget_period as BudgetPeriod,
    models: Object.freeze(JSON.parse(row.models) as string[]),
    metadata: Object.freeze(JSON.parse(row.metadata) as Record<string, string>),
  })
}
