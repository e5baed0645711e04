import { TeamError } from './errors.js'
import type { KeyRowChanges } from './store/schema.js'
import { parseTimeInput } from './time-input.js'

/** The fields a key is created or updated with, as the CLI and the admin API pass them in. */
export interface KeyFields {
  readonly name?: unknown
  /** null: follow team.defaults. 0: unlimited. */
  readonly rpm?: unknown
  readonly tpm?: unknown
  readonly maxConcurrent?: unknown
  /** null: no budget. */
  readonly budgetTokens?: unknown
  readonly budgetUsd?: unknown
  readonly budgetPeriod?: unknown
  readonly models?: unknown
  /** A span (`30d`, `12h`), an ISO 8601 date, or null for never. */
  readonly expiresAt?: unknown
  readonly metadata?: unknown
}

export type BudgetPeriod = 'day' | 'week' | 'month' | 'total'
export const BUDGET_PERIODS: readonly BudgetPeriod[] = ['day', 'week', 'month', 'total']
/** A budget set without a period never resets: the least surprising reading of "a budget". */
export const DEFAULT_BUDGET_PERIOD: BudgetPeriod = 'total'

const KEY_FIELD_NAMES = new Set([
  'name',
  'rpm',
  'tpm',
  'maxConcurrent',
  'budgetTokens',
  'budgetUsd',
  'budgetPeriod',
  'models',
  'expiresAt',
  'metadata',
])
const NAME = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/
/** Model ids and globs: no spaces or commas (the CLI's list separator). */
const MODEL_PATTERN = /^[A-Za-z0-9._:/@*?+-]{1,200}$/
const MAX_MODELS = 200
const MAX_METADATA_ENTRIES = 50
const MAX_METADATA_VALUE_CHARS = 1000

/** Validates the fields that are present and returns the columns they set. */
export function keyFieldsToColumns(fields: KeyFields, now: Date): KeyRowChanges {
  for (const field of Object.keys(fields)) {
    if (!KEY_FIELD_NAMES.has(field))
      throw new TeamError('invalid', `unknown key field "${field}" (known: ${[...KEY_FIELD_NAMES].join(', ')})`)
  }
  const columns: KeyRowChanges = {}
  if (fields.name !== undefined) columns.name = validName(fields.name)
  if (fields.rpm !== undefined) columns.rpm = limit('rpm', fields.rpm)
  if (fields.tpm !== undefined) columns.tpm = limit('tpm', fields.tpm)
  if (fields.maxConcurrent !== undefined) columns.max_concurrent = limit('maxConcurrent', fields.maxConcurrent)
  if (fields.budgetTokens !== undefined) columns.budget_tokens = limit('budgetTokens', fields.budgetTokens)
  if (fields.budgetUsd !== undefined) columns.budget_usd = budgetUsd(fields.budgetUsd)
  if (fields.budgetPeriod !== undefined) columns.budget_period = budgetPeriod(fields.budgetPeriod)
  if (fields.models !== undefined) columns.models = JSON.stringify(models(fields.models))
  if (fields.expiresAt !== undefined) columns.expires_at = expiresAt(fields.expiresAt, now)
  if (fields.metadata !== undefined) columns.metadata = JSON.stringify(metadata(fields.metadata))
  return columns
}

function validName(value: unknown): string {
  if (typeof value !== 'string' || !NAME.test(value)) {
    throw new TeamError(
      'invalid',
      `name must be 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit, found ${JSON.stringify(value)}`,
    )
  }
  // getKey takes an id or a name; a name shaped like an id or a secret would be ambiguous.
  if (value.startsWith('key_') || value.startsWith('tpk_'))
    throw new TeamError('invalid', `name must not start with key_ or tpk_, found "${value}"`)
  return value
}

function limit(field: string, value: unknown): number | null {
  if (value === null) return null
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new TeamError('invalid', `${field} must be a whole number >= 0 (0 = unlimited), found ${JSON.stringify(value)}`)
  }
  return value
}

function budgetUsd(value: unknown): number | null {
  if (value === null) return null
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new TeamError('invalid', `budgetUsd must be a number >= 0, found ${JSON.stringify(value)}`)
  }
  return value
}

function budgetPeriod(value: unknown): BudgetPeriod {
  if (typeof value !== 'string' || !(BUDGET_PERIODS as readonly string[]).includes(value)) {
    throw new TeamError('invalid', `budgetPeriod must be one of ${BUDGET_PERIODS.join(', ')}, found ${JSON.stringify(value)}`)
  }
  return value as BudgetPeriod
}

function models(value: unknown): string[] {
  if (!Array.isArray(value) || value.length > MAX_MODELS || !value.every((item) => typeof item === 'string' && MODEL_PATTERN.test(item))) {
    throw new TeamError(
      'invalid',
      `models must be a list of at most ${MAX_MODELS} model ids or globs such as google/* (no spaces or commas), found ${JSON.stringify(value)}`,
    )
  }
  return [...new Set(value as string[])]
}

function expiresAt(value: unknown, now: Date): string | null {
  if (value === null) return null
  if (typeof value !== 'string')
    throw new TeamError('invalid', `expiresAt must be a span such as 30d or an ISO 8601 date, found ${JSON.stringify(value)}`)
  return parseTimeInput('expiresAt', value, now, 'future')
}

function metadata(value: unknown): Record<string, string> {
  const valid =
    typeof value === 'object' &&
    value !== null &&
    !Array.isArray(value) &&
    Object.keys(value).length <= MAX_METADATA_ENTRIES &&
    Object.values(value).every((item) => typeof item === 'string' && item.length <= MAX_METADATA_VALUE_CHARS)
  if (!valid) {
    throw new TeamError(
      'invalid',
      `metadata must be a map of at most ${MAX_METADATA_ENTRIES} string values, found ${JSON.stringify(value)}`,
    )
  }
  return { ...(value as Record<string, string>) }
}
