import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { type ParseArgsConfig, parseArgs } from 'node:util'
import { ConfigError, loadConfig } from '../config.js'
import { TeamError } from './errors.js'
import { publishKeyChangeOnce } from './key-events.js'
import type { KeyFields } from './key-fields.js'
import { type KeyRecord, keyStatus } from './keys.js'
import type { UsageSummaryRow } from './store/store.js'
import { openTeamService, type TeamService } from './team-service.js'
import { parseTimeInput } from './time-input.js'
import { USAGE_GROUPINGS } from './usage.js'

/**
 * `toprouter-proxy keys …` and `toprouter-proxy usage …`: the keys and usage service on the store the
 * config names, with no server running and no TOPROUTER_API_KEY. Tables by default, --json for scripts.
 */

export interface CliIo {
  readonly stdout: (text: string) => void
  readonly stderr: (text: string) => void
  readonly env: Readonly<Record<string, string | undefined>>
  readonly cwd: string
  readonly now?: () => Date
}

export const EXIT_OK = 0
export const EXIT_NOT_FOUND = 1
export const EXIT_BAD_INPUT = 2

const KEY_FIELD_OPTIONS = {
  name: { type: 'string' },
  rpm: { type: 'string' },
  tpm: { type: 'string' },
  'max-concurrent': { type: 'string' },
  'budget-tokens': { type: 'string' },
  'budget-usd': { type: 'string' },
  'budget-period': { type: 'string' },
  models: { type: 'string' },
  expires: { type: 'string' },
} as const
const COMMON_OPTIONS = { config: { type: 'string' }, json: { type: 'boolean' } } as const
const USAGE_OPTIONS = { key: { type: 'string' }, since: { type: 'string' }, until: { type: 'string' }, by: { type: 'string' } } as const

type Values = Record<string, string | boolean | undefined>

/** Runs one subcommand; resolves with the exit code. */
export async function runTeamCli(argv: readonly string[], io: CliIo): Promise<number> {
  const now = io.now ?? (() => new Date())
  try {
    const [command, ...rest] = argv
    const plan = command === 'usage' ? planUsage(rest, now()) : planKeys(rest, now())
    const config = loadConfig({
      configPath: plan.values.config as string | undefined,
      env: io.env,
      forServing: false,
      readFile: (path) => readFileSync(resolve(io.cwd, path), 'utf8'),
    })
    const team = await openTeamService(config.team.storeUrl, { cwd: io.cwd, now, poolSize: config.team.storePoolSize })
    let changedKeyId: string | undefined
    try {
      const changed = await plan.run(team, io, plan.values.json === true)
      if (typeof changed === 'string') changedKeyId = changed
    } finally {
      await team.close()
    }
    if (changedKeyId !== undefined && config.team.redisUrl !== '') {
      // The change is in the store either way; this only tells the running replicas at once.
      const error = await publishKeyChangeOnce(config.team.redisUrl, config.team.redisKeyPrefix, changedKeyId)
      if (error !== undefined) {
        io.stderr(
          `toprouter-proxy: warning: could not tell the running proxies through Redis (${error.message}); they pick the change up within team.keyCacheTtlMs\n`,
        )
      }
    }
    return EXIT_OK
  } catch (err: unknown) {
    if (err instanceof TeamError) {
      io.stderr(`toprouter-proxy: ${err.message}\n`)
      return err.kind === 'not_found' ? EXIT_NOT_FOUND : EXIT_BAD_INPUT
    }
    if (err instanceof ConfigError) {
      io.stderr(`toprouter-proxy: ${err.message}\n`)
      return EXIT_BAD_INPUT
    }
    throw err
  }
}

interface Plan {
  readonly values: Values
  /** Resolves with the id (a string) of the key it updated or revoked, if any: told to the replicas through Redis. */
  readonly run: (team: TeamService, io: CliIo, json: boolean) => Promise<unknown>
}

function parse(args: readonly string[], options: NonNullable<ParseArgsConfig['options']>, positionals: number, usage: string) {
  let parsed: { values: Values; positionals: string[] }
  try {
    parsed = parseArgs({ args: [...args], options, strict: true, allowPositionals: positionals > 0 }) as typeof parsed
  } catch (err: unknown) {
    throw new TeamError('invalid', `${(err as Error).message.replaceAll('\n', ' ')} (usage: ${usage})`)
  }
  if (parsed.positionals.length !== positionals) {
    throw new TeamError('invalid', `expected ${positionals === 0 ? 'no argument' : 'one NAME or ID'} (usage: ${usage})`)
  }
  return parsed
}

function planKeys(args: readonly string[], now: Date): Plan {
  const [subcommand, ...rest] = args
  switch (subcommand) {
    case 'create': {
      const { values } = parse(rest, { ...COMMON_OPTIONS, ...KEY_FIELD_OPTIONS }, 0, 'keys create --name NAME [flags]')
      if (values.name === undefined) throw new TeamError('invalid', '--name is required (usage: keys create --name NAME [flags])')
      const fields = keyFieldsFromFlags(values, now)
      return {
        values,
        async run(team, io, json) {
          const { record, secret } = await team.keys.createKey(fields)
          if (json) return io.stdout(`${JSON.stringify({ ...record, key: secret }, null, 2)}\n`)
          io.stdout(
            `${describeKey(record)}\n\nsecret:  ${secret}\nThis secret will not be shown again: give it to the member now (only its SHA-256 is stored).\n`,
          )
        },
      }
    }
    case 'list': {
      const { values } = parse(rest, COMMON_OPTIONS, 0, 'keys list')
      return {
        values,
        async run(team, io, json) {
          const keys = await team.keys.listKeys()
          if (json) return io.stdout(`${JSON.stringify({ data: keys }, null, 2)}\n`)
          io.stdout(keys.length === 0 ? 'no keys yet: toprouter-proxy keys create --name NAME\n' : keyTable(keys))
        },
      }
    }
    case 'show':
    case 'revoke': {
      const { values, positionals } = parse(rest, COMMON_OPTIONS, 1, `keys ${subcommand} NAME|ID`)
      const idOrName = positionals[0] ?? ''
      return {
        values,
        async run(team, io, json) {
          const record = subcommand === 'show' ? await team.keys.getKey(idOrName) : await team.keys.revokeKey(idOrName)
          io.stdout(json ? `${JSON.stringify(record, null, 2)}\n` : `${describeKey(record)}\n`)
          return subcommand === 'revoke' ? record.id : undefined
        },
      }
    }
    case 'update': {
      const { values, positionals } = parse(rest, { ...COMMON_OPTIONS, ...KEY_FIELD_OPTIONS }, 1, 'keys update NAME|ID [flags]')
      const fields = keyFieldsFromFlags(values, now)
      if (Object.keys(fields).length === 0) throw new TeamError('invalid', 'keys update needs at least one field flag, e.g. --rpm 60')
      const idOrName = positionals[0] ?? ''
      return {
        values,
        async run(team, io, json) {
          const record = await team.keys.updateKey(idOrName, fields)
          io.stdout(json ? `${JSON.stringify(record, null, 2)}\n` : `${describeKey(record)}\n`)
          return record.id
        },
      }
    }
    default:
      throw new TeamError(
        'invalid',
        `${subcommand === undefined || subcommand.startsWith('-') ? 'keys needs a subcommand' : `unknown keys subcommand "${subcommand}"`}: create, list, show, update or revoke`,
      )
  }
}

function planUsage(args: readonly string[], now: Date): Plan {
  const { values } = parse(
    args,
    { ...COMMON_OPTIONS, ...USAGE_OPTIONS },
    0,
    'usage [--key NAME|ID] [--since 7d] [--until …] [--by key|model|day]',
  )
  const by = (values.by as string | undefined) ?? 'key'
  if (!(USAGE_GROUPINGS as readonly string[]).includes(by)) {
    throw new TeamError('invalid', `--by must be one of ${USAGE_GROUPINGS.join(', ')}, found ${JSON.stringify(by)}`)
  }
  const time = (flag: string) => {
    const value = values[flag] as string | undefined
    return value === undefined ? undefined : new Date(parseTimeInput(`--${flag}`, value, now, 'past'))
  }
  const query = { key: values.key as string | undefined, since: time('since'), until: time('until'), by: by as 'key' | 'model' | 'day' }
  return {
    values,
    async run(team, io, json) {
      const rows = await team.usage.summarizeUsage(query)
      if (json) return io.stdout(`${JSON.stringify({ data: rows }, null, 2)}\n`)
      io.stdout(rows.length === 0 ? 'no usage in this range\n' : usageTable(by, rows))
    },
  }
}

function keyFieldsFromFlags(values: Values, now: Date): KeyFields {
  const fields: Record<string, unknown> = {}
  const text = (flag: string) => values[flag] as string | undefined
  if (text('name') !== undefined) fields.name = text('name')
  const integers: Array<[string, string]> = [
    ['rpm', 'rpm'],
    ['tpm', 'tpm'],
    ['max-concurrent', 'maxConcurrent'],
    ['budget-tokens', 'budgetTokens'],
  ]
  for (const [flag, field] of integers) {
    const value = text(flag)
    if (value === undefined) continue
    if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
      throw new TeamError('invalid', `--${flag} must be a whole number >= 0 (0 = unlimited), found ${JSON.stringify(value)}`)
    }
    fields[field] = Number(value)
  }
  const budgetUsd = text('budget-usd')
  if (budgetUsd !== undefined) {
    if (!/^\d+(\.\d+)?$/.test(budgetUsd))
      throw new TeamError('invalid', `--budget-usd must be a number >= 0, found ${JSON.stringify(budgetUsd)}`)
    fields.budgetUsd = Number(budgetUsd)
  }
  if (text('budget-period') !== undefined) fields.budgetPeriod = text('budget-period')
  const models = text('models')
  if (models !== undefined) {
    fields.models = models
      .split(',')
      .map((model) => model.trim())
      .filter((model) => model !== '')
  }
  const expires = text('expires')
  if (expires !== undefined) {
    // Checked here so the message names the flag; the service parses the same text again.
    if (expires !== 'never') parseTimeInput('--expires', expires, now, 'future')
    fields.expiresAt = expires === 'never' ? null : expires
  }
  return fields
}

function limitText(value: number | null): string {
  if (value === null) return 'default'
  return value === 0 ? 'unlimited' : String(value)
}

function budgetText(record: KeyRecord): string {
  const parts = [
    ...(record.budgetTokens === null ? [] : [`${record.budgetTokens} tokens`]),
    ...(record.budgetUsd === null ? [] : [`$${record.budgetUsd}`]),
  ]
  return parts.length === 0 ? 'none' : `${parts.join(' and ')} per ${record.budgetPeriod === 'total' ? 'lifetime' : record.budgetPeriod}`
}

function describeKey(record: KeyRecord): string {
  const lines: Array<[string, string]> = [
    ['id', record.id],
    ['name', record.name],
    ['prefix', record.prefix],
    ['status', keyStatus(record, new Date())],
    ['created', record.createdAt],
    ['expires', record.expiresAt ?? 'never'],
    ['revoked', record.revokedAt ?? '-'],
    ['rpm', limitText(record.rpm)],
    ['tpm', limitText(record.tpm)],
    ['concurrent', limitText(record.maxConcurrent)],
    ['budget', budgetText(record)],
    ['models', record.models.length === 0 ? 'all' : record.models.join(', ')],
    ['metadata', Object.keys(record.metadata).length === 0 ? '-' : JSON.stringify(record.metadata)],
  ]
  return lines.map(([label, value]) => `${`${label}:`.padEnd(12)}${value}`).join('\n')
}

function keyTable(keys: readonly KeyRecord[]): string {
  const now = new Date()
  return table(
    ['NAME', 'ID', 'PREFIX', 'STATUS', 'RPM', 'TPM', 'CONCURRENT', 'BUDGET', 'MODELS', 'EXPIRES'],
    keys.map((key) => [
      key.name,
      key.id,
      key.prefix,
      keyStatus(key, now),
      limitText(key.rpm),
      limitText(key.tpm),
      limitText(key.maxConcurrent),
      budgetText(key),
      key.models.length === 0 ? 'all' : key.models.join(','),
      key.expiresAt ?? 'never',
    ]),
  )
}

function usageTable(by: string, rows: readonly UsageSummaryRow[]): string {
  return table(
    [by.toUpperCase(), 'REQUESTS', 'ERRORS', 'PROMPT', 'COMPLETION', 'TOTAL', 'COST_USD'],
    rows.map((row) => [
      row.group,
      String(row.requests),
      String(row.errors),
      String(row.promptTokens),
      String(row.completionTokens),
      String(row.totalTokens),
      row.costUsd === null ? 'unknown' : row.costUsd.toFixed(6),
    ]),
  )
}

function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => (row[column] ?? '').length)))
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, column) => cell.padEnd(widths[column] ?? 0))
      .join('  ')
      .trimEnd()
  return `${[headers, ...rows].map(line).join('\n')}\n`
}
