import { readFileSync } from 'node:fs'
import { type Static, type TProperties, Type } from '@sinclair/typebox'
import { Ajv, type ErrorObject } from 'ajv'
import { parse as parseYaml } from 'yaml'
import { parseStoreUrl } from './team/store/store-url.js'

/**
 * Configuration: defaults < YAML file < environment < flags, validated once against one JSON
 * schema (which also carries every default) and frozen. Secrets are never read from the file.
 */

/** What the YAML file and the overrides may set: the schema below, as a type. */
type FileConfig = Static<typeof CONFIG_SCHEMA>

export interface Config extends DeepReadonly<FileConfig> {
  /** From TOPROUTER_API_KEY only; replaces the client's Authorization when set. */
  readonly apiKey: string | undefined
  /** From TOPROUTER_PROXY_ADMIN_KEY only; team mode's admin API exists only when it is set. */
  readonly adminKey: string | undefined
}

/** An admin key shorter than this is refused: it guards every member's key and budget. */
const MIN_ADMIN_KEY_CHARS = 16

/** Static<> is mutable, but the loaded config is frozen; the type says so. */
type DeepReadonly<T> = T extends readonly (infer Item)[]
  ? readonly DeepReadonly<Item>[]
  : T extends object
    ? { readonly [K in keyof T]: DeepReadonly<T[K]> }
    : T

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

const LIMIT_DEFAULT = Type.Integer({ minimum: 0, default: 0 })
const ms = (defaultMs: number, minimum = 0) => Type.Integer({ minimum, default: defaultMs })
const section = <T extends TProperties>(properties: T) => Type.Object(properties, { additionalProperties: false, default: {} })

/** The schema is the single source of defaults and of the Config type; config.example.yaml is tested against it. */
export const CONFIG_SCHEMA = Type.Object(
  {
    listen: section({
      host: Type.String({ minLength: 1, default: '127.0.0.1' }),
      port: Type.Integer({ minimum: 0, maximum: 65535, default: 8787 }),
    }),
    upstream: section({
      baseUrl: Type.String({ format: 'http-url', default: 'https://toprouter.cc' }),
      connectTimeoutMs: ms(5000, 1),
      firstByteTimeoutMs: ms(60000, 1),
      responseTimeoutMs: ms(600000, 1),
      streamIdleTimeoutMs: ms(60000, 1),
      requestTimeoutMs: ms(600000, 1),
      maxConnections: Type.Integer({ minimum: 1, default: 1024 }),
      keepAliveTimeoutMs: ms(30000, 1),
      maxErrorBodyBytes: Type.Integer({ minimum: 1024, default: 1048576 }),
    }),
    retry: section({
      maxAttempts: Type.Integer({ minimum: 1, maximum: 10, default: 3 }),
      baseDelayMs: ms(500),
      maxDelayMs: ms(8000),
      maxRetryAfterMs: ms(60000),
      budgetPercent: Type.Number({ minimum: 0, maximum: 100, default: 10 }),
      budgetMinPerSecond: Type.Number({ minimum: 0, default: 5 }),
    }),
    breaker: section({
      errorThresholdPercentage: Type.Number({ exclusiveMinimum: 0, maximum: 100, default: 50 }),
      volumeThreshold: Type.Integer({ minimum: 1, default: 10 }),
      rollingWindowMs: ms(10000, 100),
      resetTimeoutMs: ms(30000, 1),
    }),
    fallbacks: Type.Record(Type.String(), Type.Array(Type.String({ minLength: 1 }), { maxItems: 10 }), { default: {} }),
    models: section({
      cacheTtlMs: ms(60000),
      staleIfErrorMs: ms(86400000),
    }),
    streams: section({
      continuation: section({
        enabled: Type.Boolean({ default: false }),
        prefillModels: Type.Array(Type.String({ minLength: 1 }), { minItems: 1, maxItems: 100, default: ['*'] }),
        maxContinuations: Type.Integer({ minimum: 1, maximum: 5, default: 1 }),
      }),
    }),
    server: section({
      bodyLimitBytes: Type.Integer({ minimum: 1024, default: 10485760 }),
      drainTimeoutMs: ms(30000),
      headersTimeoutMs: ms(30000, 1),
      requestTimeoutMs: ms(60000, 1),
      keepAliveTimeoutMs: ms(72000, 1),
    }),
    team: section({
      enabled: Type.Boolean({ default: false }),
      storeUrl: Type.String({ minLength: 1, default: 'sqlite:toprouter-proxy.db' }),
      storePoolSize: Type.Integer({ minimum: 1, default: 10 }),
      redisUrl: Type.String({ default: '' }),
      redisKeyPrefix: Type.String({ minLength: 1, maxLength: 100, default: 'toprouter:' }),
      keyCacheTtlMs: ms(5000),
      usageFlushMs: ms(1000, 1),
      maxQueueWaitMs: ms(0),
      redisFailure: Type.Unsafe<'open' | 'closed'>({ type: 'string', enum: ['open', 'closed'], default: 'open' }),
      defaults: section({ rpm: LIMIT_DEFAULT, tpm: LIMIT_DEFAULT, maxConcurrent: LIMIT_DEFAULT }),
      prices: Type.Record(
        Type.String({ minLength: 1 }),
        Type.Object(
          { inputPerMTok: Type.Number({ minimum: 0 }), outputPerMTok: Type.Number({ minimum: 0 }) },
          { additionalProperties: false },
        ),
        { default: {} },
      ),
    }),
    log: section({
      // A plain enum, not TypeBox's union of literals (anyOf), so a bad value gets one "must be one of" error.
      level: Type.Unsafe<LogLevel>({ type: 'string', enum: LOG_LEVELS, default: 'info' }),
    }),
  },
  { additionalProperties: false },
)

/** A config value that cannot be used; startup stops with exit code 2 and this message. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ConfigError'
  }
}

export interface ConfigSources {
  /**
   * False for the CLI subcommands (keys, usage), which work on the store without the upstream key.
   * @default true
   */
  readonly forServing?: boolean
  /** Path of the YAML file, if any (from --config or TOPROUTER_PROXY_CONFIG). */
  readonly configPath?: string | undefined
  readonly env?: Readonly<Record<string, string | undefined>>
  readonly flags?: { readonly host?: string | undefined; readonly port?: string | undefined; readonly upstream?: string | undefined }
  readonly readFile?: (path: string) => string
}

type Origin = string
type RawConfig = Record<string, Record<string, unknown>>

const ajv = new Ajv({ useDefaults: true, allErrors: false, strict: true })
ajv.addFormat('http-url', isHttpUrl)
const validateSchema = ajv.compile<FileConfig>(CONFIG_SCHEMA)

function isHttpUrl(value: string): boolean {
  try {
    const url = new URL(value)
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.search === '' && url.hash === ''
  } catch {
    return false
  }
}

export function loadConfig(sources: ConfigSources = {}): Config {
  const env = sources.env ?? {}
  const readFile = sources.readFile ?? ((path: string) => readFileSync(path, 'utf8'))
  const origins = new Map<string, Origin>()
  const raw: RawConfig = {}

  const configPath = sources.configPath ?? nonEmpty(env.TOPROUTER_PROXY_CONFIG)
  if (configPath !== undefined) {
    Object.assign(raw, readYamlFile(configPath, readFile))
    for (const [sectionName, value] of Object.entries(raw)) {
      if (isPlainObject(value)) {
        for (const key of Object.keys(value)) origins.set(`${sectionName}.${key}`, `in ${configPath}`)
      }
    }
  }

  const set = (path: string, value: unknown, origin: Origin) => {
    const [sectionName, key] = path.split('.') as [string, string]
    const existing = raw[sectionName]
    const target = isPlainObject(existing) ? existing : {}
    raw[sectionName] = target
    target[key] = value
    origins.set(path, origin)
  }
  const envOverrides: ReadonlyArray<[string, string, (v: string) => unknown]> = [
    ['TOPROUTER_BASE_URL', 'upstream.baseUrl', String],
    ['HOST', 'listen.host', String],
    ['PORT', 'listen.port', numberOrString],
    ['LOG_LEVEL', 'log.level', (v) => v.toLowerCase()],
    // Store and Redis URLs may hold passwords, which belong in the environment rather than the file.
    ['TOPROUTER_PROXY_STORE_URL', 'team.storeUrl', String],
    ['TOPROUTER_PROXY_REDIS_URL', 'team.redisUrl', String],
  ]
  for (const [name, path, convert] of envOverrides) {
    const value = nonEmpty(env[name])
    if (value !== undefined) set(path, convert(value), `from environment variable ${name}`)
  }
  const flags = sources.flags ?? {}
  if (flags.host !== undefined) set('listen.host', flags.host, 'from flag --host')
  if (flags.port !== undefined) set('listen.port', numberOrString(flags.port), 'from flag --port')
  if (flags.upstream !== undefined) set('upstream.baseUrl', flags.upstream, 'from flag --upstream')

  if (!validateSchema(raw)) {
    throw new ConfigError(describeSchemaError(validateSchema.errors?.[0], raw, origins))
  }
  const upstream = { ...raw.upstream, baseUrl: raw.upstream.baseUrl.replace(/\/+$/, '') }
  for (const [model, chain] of Object.entries(raw.fallbacks)) {
    if (chain.includes(model)) {
      throw new ConfigError(`config error: fallbacks."${model}" must not list the model itself, found ${JSON.stringify(chain)}`)
    }
  }

  if (parseStoreUrl(raw.team.storeUrl) === undefined) {
    throw new ConfigError(
      `config error: team.storeUrl must be sqlite:<path> or postgres://user@host:5432/db, found ${describeValue(raw.team.storeUrl)}${originOf(origins, 'team.storeUrl')}`,
    )
  }

  const apiKey = nonEmpty(env.TOPROUTER_API_KEY)
  if (apiKey !== undefined && !/^[\x21-\x7e]+$/.test(apiKey)) {
    throw new ConfigError('config error: TOPROUTER_API_KEY must be printable ASCII without spaces, found a value with other characters')
  }
  if ((sources.forServing ?? true) && raw.team.enabled && apiKey === undefined) {
    throw new ConfigError(
      `config error: team.enabled is true${originOf(origins, 'team.enabled')} but TOPROUTER_API_KEY is not set: in team mode the proxy holds the upstream key and members present gateway keys`,
    )
  }
  const adminKey = nonEmpty(env.TOPROUTER_PROXY_ADMIN_KEY)
  if (adminKey !== undefined && !new RegExp(`^[\\x21-\\x7e]{${MIN_ADMIN_KEY_CHARS},}$`).test(adminKey)) {
    throw new ConfigError(
      `config error: TOPROUTER_PROXY_ADMIN_KEY must be at least ${MIN_ADMIN_KEY_CHARS} printable ASCII characters without spaces (e.g. openssl rand -hex 32), found a value that is not`,
    )
  }
  if ((sources.forServing ?? true) && adminKey !== undefined && !raw.team.enabled) {
    throw new ConfigError(
      'config error: TOPROUTER_PROXY_ADMIN_KEY is set but team.enabled is false: the admin API manages team gateway keys, so it needs team mode',
    )
  }
  return deepFreeze({ ...raw, upstream, apiKey, adminKey })
}

function readYamlFile(path: string, readFile: (path: string) => string): RawConfig {
  let text: string
  try {
    text = readFile(path)
  } catch (err: unknown) {
    throw new ConfigError(`config error: cannot read config file ${path}: ${(err as Error).message}`)
  }
  let parsed: unknown
  try {
    parsed = parseYaml(text)
  } catch (err: unknown) {
    throw new ConfigError(`config error: ${path} is not valid YAML: ${(err as Error).message.split('\n')[0]}`)
  }
  if (parsed === null || parsed === undefined) return {}
  if (!isPlainObject(parsed)) {
    throw new ConfigError(`config error: ${path} must hold a YAML mapping of sections, found ${describeValue(parsed)}`)
  }
  for (const secretKey of ['apiKey', 'api_key', 'key', 'token']) {
    if (JSON.stringify(parsed).includes(`"${secretKey}"`)) {
      throw new ConfigError(
        `config error: ${path} holds "${secretKey}": secrets come from the environment (TOPROUTER_API_KEY), never from the config file`,
      )
    }
  }
  return parsed as RawConfig
}

function describeSchemaError(error: ErrorObject | undefined, raw: RawConfig, origins: Map<string, Origin>): string {
  if (error === undefined) return 'config error: invalid configuration'
  // JSON Pointer escapes: a model id such as a/b is the segment a~1b.
  const segments = error.instancePath
    .split('/')
    .filter(Boolean)
    .map((segment) => segment.replaceAll('~1', '/').replaceAll('~0', '~'))
  if (error.keyword === 'additionalProperties') {
    const extra = String((error.params as { additionalProperty: string }).additionalProperty)
    const where = [...segments, extra].join('.')
    const known = knownKeys(segments)
    return `config error: unknown key "${where}" (known keys here: ${known.join(', ')})`
  }
  const path = segments.join('.')
  const found = segments.reduce<unknown>((node, key) => (isPlainObject(node) ? node[key] : undefined), raw)
  const origin = origins.get(segments.slice(0, 2).join('.'))
  return `config error: ${path || 'config'} ${expectation(error)}, found ${describeValue(found)}${origin ? ` (${origin})` : ''}`
}

function expectation(error: ErrorObject): string {
  const params = error.params as Record<string, unknown>
  switch (error.keyword) {
    case 'type':
      return `must be ${params.type === 'integer' ? 'a whole number' : `a ${String(params.type)}`}`
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
      return `must be a number ${String(params.comparison)} ${String(params.limit)}`
    case 'enum':
      return `must be one of ${(params.allowedValues as string[]).join(', ')}`
    case 'format':
      return 'must be an http:// or https:// URL without query or fragment'
    case 'minLength':
      return 'must not be empty'
    default:
      return error.message ?? 'is invalid'
  }
}

function knownKeys(segments: readonly string[]): string[] {
  type Node = { properties?: Record<string, Node> }
  const node = segments.reduce<Node | undefined>((schema, key) => schema?.properties?.[key], CONFIG_SCHEMA as Node)
  return Object.keys(node?.properties ?? {})
}

function originOf(origins: Map<string, Origin>, path: string): string {
  const origin = origins.get(path)
  return origin === undefined ? '' : ` (${origin})`
}

function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing'
  if (typeof value === 'string') return JSON.stringify(value)
  return JSON.stringify(value) ?? String(value)
}

function numberOrString(value: string): number | string {
  return /^-?\d+(\.\d+)?$/.test(value.trim()) ? Number(value) : value
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value.trim()
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** Freezes an object and everything in it (the loaded config is immutable all the way down). */
export function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child)
    Object.freeze(value)
  }
  return value
}
