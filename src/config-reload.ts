import type { Logger } from 'pino'
import { Counter, type Registry } from 'prom-client'
import { type Config, deepFreeze, isPlainObject } from './config.js'

/**
 * Hot reload (SIGHUP, `POST /admin/reload`): the config is loaded again from the same sources, the
 * keys that changed are listed by name, the ones the running process cannot change (the listen
 * address, the stores, what Fastify and the upstream pool fix at start) keep their running value,
 * and the rest is handed to `apply` as one new frozen Config — the app swaps the snapshot its
 * request handlers read (Envoy's and agentgateway's reload: an atomic swap of an immutable
 * snapshot). An invalid config changes nothing: the running one stays, and the error names the key.
 */

/** Keys (or whole sections) a reload cannot apply: each one changed is reported, and keeps its running value. */
export const RESTART_ONLY_KEYS: readonly string[] = [
  'listen.host',
  'listen.port',
  // The upstream pool (its origin, size, keep-alive and connect timeout) is built once.
  'upstream.baseUrl',
  'upstream.maxConnections',
  'upstream.keepAliveTimeoutMs',
  'upstream.connectTimeoutMs',
  // Fastify and Node's HTTP server fix these when the server is created.
  'server.bodyLimitBytes',
  'server.headersTimeoutMs',
  'server.requestTimeoutMs',
  'server.keepAliveTimeoutMs',
  // Team mode (store, Redis, limiter, key cache, usage writer) is opened once at startup;
  // only team.defaults and team.prices apply at once (the gateway reads them per request).
  'team.enabled',
  'team.storeUrl',
  'team.storePoolSize',
  'team.redisUrl',
  'team.redisKeyPrefix',
  'team.keyCacheTtlMs',
  'team.usageFlushMs',
  'team.maxQueueWaitMs',
  'team.redisFailure',
]

export type ReloadReport =
  | { readonly ok: true; readonly changed: readonly string[]; readonly needsRestart: readonly string[] }
  | { readonly ok: false; readonly error: string }

export interface ReloadPlan {
  /** What the app runs next: the loaded config with every restart-only key at its running value. */
  readonly config: Config
  /** Keys applied now, by name (never values). */
  readonly changed: readonly string[]
  /** Keys that changed but keep their running value until a restart. */
  readonly needsRestart: readonly string[]
}

/** Secrets come from the environment, which a reload reads as it was at startup; never listed. */
const SECRET_KEYS = new Set(['apiKey', 'adminKey'])

export function planReload(running: Config, loaded: Config): ReloadPlan {
  const differing: string[] = []
  diffInto(running, loaded, '', differing)
  const needsRestart = differing.filter(isRestartOnly)
  const changed = differing.filter((key) => !isRestartOnly(key))
  if (needsRestart.length === 0) return { config: loaded, changed, needsRestart }
  const merged = structuredClone(loaded) as unknown as Record<string, unknown>
  for (const prefix of RESTART_ONLY_KEYS) {
    if (needsRestart.some((key) => key === prefix || key.startsWith(`${prefix}.`))) copyPath(running, merged, prefix)
  }
  return { config: deepFreeze(merged) as unknown as Config, changed, needsRestart }
}

export interface ConfigReloaderOptions {
  readonly running: () => Config
  /** Loads the config from the startup sources; throws (a ConfigError) when it is invalid. */
  readonly load: () => Config
  /** Makes `config` the one new requests use. */
  readonly apply: (config: Config, changed: readonly string[]) => void
  readonly logger: Pick<Logger, 'info' | 'warn' | 'error'>
  /** Where `toprouter_proxy_config_reloads_total` is registered. */
  readonly registry: Registry
}

export function createConfigReloader(options: ConfigReloaderOptions): () => ReloadReport {
  const { logger } = options
  const reloads = new Counter({
    name: 'toprouter_proxy_config_reloads_total',
    help: 'Config reloads (SIGHUP, POST /admin/reload), by result',
    labelNames: ['result'],
    registers: [options.registry],
  })
  return function reload(): ReloadReport {
    let loaded: Config
    try {
      loaded = options.load()
    } catch (err: unknown) {
      const error = (err as Error).message
      reloads.inc({ result: 'invalid' })
      logger.error({ reload: 'invalid' }, `config reload refused, the running config stays: ${error}`)
      return { ok: false, error }
    }
    const plan = planReload(options.running(), loaded)
    for (const key of plan.needsRestart) logger.warn({ key }, `${key} changed: needs a restart; the running value stays`)
    // Written before the swap, so a new log.level cannot hide the line that announces it.
    logger.info(
      { reload: 'ok', changed: plan.changed, needsRestart: plan.needsRestart },
      plan.changed.length === 0 ? 'config reloaded: nothing to apply' : `config reloaded: ${plan.changed.join(', ')} applied`,
    )
    if (plan.changed.length > 0) options.apply(plan.config, plan.changed)
    reloads.inc({ result: 'ok' })
    return { ok: true, changed: plan.changed, needsRestart: plan.needsRestart }
  }
}

function isRestartOnly(key: string): boolean {
  return RESTART_ONLY_KEYS.some((prefix) => key === prefix || key.startsWith(`${prefix}.`))
}

/** Leaf paths that differ; arrays are leaves (a fallback chain is one value). */
function diffInto(a: unknown, b: unknown, prefix: string, out: string[]): void {
  if (isPlainObject(a) && isPlainObject(b)) {
    for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) {
      if (prefix === '' && SECRET_KEYS.has(key)) continue
      diffInto(a[key], b[key], prefix === '' ? key : `${prefix}.${key}`, out)
    }
    return
  }
  if (JSON.stringify(a) !== JSON.stringify(b)) out.push(prefix)
}

/** `path` is one of RESTART_ONLY_KEYS: schema keys, without dots of their own. */
function copyPath(from: unknown, to: Record<string, unknown>, path: string): void {
  const segments = path.split('.')
  let source = from
  let target = to
  for (const key of segments.slice(0, -1)) {
    source = isPlainObject(source) ? source[key] : undefined
    if (!isPlainObject(target[key])) target[key] = {}
    target = target[key] as Record<string, unknown>
  }
  const last = segments[segments.length - 1] as string
  const value = isPlainObject(source) ? source[last] : undefined
  if (value === undefined) delete target[last]
  else target[last] = structuredClone(value)
}
