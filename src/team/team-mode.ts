import type { Registry } from 'prom-client'
import type { Config } from '../config.js'
import type { ReloadReport } from '../config-reload.js'
import type { EventLog } from '../logging.js'
import type { RouteEntry } from '../routes/table.js'
import type { ModelPauses } from '../upstream/model-pauses.js'
import { createAdminRoutes } from './admin-routes.js'
import { createMemoryBudgetLedger, type SpendSince } from './budget.js'
import { createTeamGateway, type TeamGateway } from './gateway.js'
import { createKeyCache } from './key-cache.js'
import { createKeyEvents, type KeyEvents } from './key-events.js'
import type { KeyRecord } from './keys.js'
import { createKeyLimiter, type KeyLimiter } from './limiter.js'
import { createRedisModelPauses, type RedisModelPauses } from './model-pauses.js'
import { createRedisKeyLimiter, type RedisKeyLimiter } from './redis-limiter.js'
import { createTeamMetrics, type KeyRequestListener } from './team-metrics.js'
import { openTeamService, type TeamService } from './team-service.js'
import type { UsageRecord } from './usage.js'
import { createUsageWriter } from './usage-writer.js'

/**
 * Team mode, opened once at startup (main.ts loads this module only when `team.enabled`): the
 * store and its services, and the request path's parts over them — key cache, limiter, budget
 * ledger, usage writer and metrics. With `team.redisUrl` the limiter (budgets included) is the
 * Redis one, shared by the replicas; that choice is made here and nowhere else.
 */

export interface TeamMode {
  readonly gateway: TeamGateway
  readonly service: TeamService
  /** The team metrics, served with the app's own. */
  readonly registry: Registry
  /** With `team.redisUrl`: model pauses shared by the replicas (else the app keeps its own). */
  readonly modelPauses: ModelPauses | undefined
  /**
   * The admin API's routes; none without an admin key (then `/admin/*` is a 404 like any unknown route).
   * With `reload`, `POST /admin/reload` runs it (the app's config reload).
   */
  adminRoutes(adminKey: string | undefined, reload?: () => ReloadReport): RouteEntry[]
  /** Each finished chat request of a key (its name, status and tokens), for the status page. */
  onKeyRequest(listener: KeyRequestListener): void
  /**
   * What works in a reduced way right now, for `/readyz`: `redis` (limits counted per replica, or
   * refused with `redisFailure: closed`), `store` (usage waiting in memory, uncached keys refused).
   * Still ready: every replica shares the same Redis and store, so taking one out of the load
   * balancer would only move its clients to replicas in the same state.
   */
  degraded(): string[]
  /** Writes the waiting usage records now; false when the store refused them (they stay queued). */
  flushUsage(): Promise<boolean>
  /** Writes every waiting usage record, then closes the store: the last step of a drain. */
  close(): Promise<void>
}

export interface TeamModeOptions {
  readonly log: EventLog
  /** Monotonic ms. @default performance.now */
  readonly now?: () => number
  readonly wallClockNow?: () => number
  /** A relative sqlite: path is relative to this. @default process.cwd() */
  readonly cwd?: string
  /** How long a store write waits for another writer's lock. @default 100 */
  readonly storeBusyTimeoutMs?: number
  /** Overrides `team.redisKeyPrefix` (tests: a prefix per test). */
  readonly redisKeyPrefix?: string
}

/**
 * SQLite waits for a lock on the calling thread, so the server's wait is short: a store held by
 * another writer (the CLI, a backup) stalls the event loop at most this long per attempt, and the
 * usage writer retries later. The CLI keeps the store's longer default.
 */
const SERVER_STORE_BUSY_TIMEOUT_MS = 100

/** Usage records kept in memory while the store is unavailable; beyond it the oldest are dropped, and counted. */
const MAX_WAITING_USAGE_RECORDS = 100_000

export async function openTeamMode(config: Config, options: TeamModeOptions): Promise<TeamMode> {
  const team = config.team
  const now = options.now ?? (() => performance.now())
  const wallClockNow = options.wallClockNow ?? Date.now
  const service = await openTeamService(team.storeUrl, {
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    busyTimeoutMs: options.storeBusyTimeoutMs ?? SERVER_STORE_BUSY_TIMEOUT_MS,
    poolSize: team.storePoolSize,
    now: () => new Date(wallClockNow()),
  })
  const metrics = createTeamMetrics()
  const usage = createUsageWriter<UsageRecord>({
    sink: { write: (records) => service.usage.recordUsage(records) },
    flushMs: team.usageFlushMs,
    maxQueued: MAX_WAITING_USAGE_RECORDS,
    log: options.log,
  })
  const spendSince: SpendSince = async (keyId, since) => {
    const [row] = await service.store.usage.summarizeUsage({ keyId, since: since.toISOString(), by: 'key' })
    return { tokens: row?.totalTokens ?? 0, usd: row?.costUsd ?? 0 }
  }
  let redisLimiter: RedisKeyLimiter | undefined
  let modelPauses: RedisModelPauses | undefined
  let limiter: KeyLimiter
  const redisKeyPrefix = options.redisKeyPrefix ?? team.redisKeyPrefix
  if (team.redisUrl === '')
    limiter = createKeyLimiter({ maxQueueWaitMs: team.maxQueueWaitMs, now, budgets: createMemoryBudgetLedger(spendSince) })
  else {
    redisLimiter = createRedisKeyLimiter({
      maxQueueWaitMs: team.maxQueueWaitMs,
      now,
      redisUrl: team.redisUrl,
      keyPrefix: redisKeyPrefix,
      failure: team.redisFailure,
      log: options.log,
      spendSince,
      wallClockNow,
    })
    // Redis down at startup does not stop the proxy: it serves by team.redisFailure and reconnects.
    await redisLimiter.connect()
    const shared = redisLimiter
    metrics.watchRedis(() => shared.redisUp())
    limiter = redisLimiter
    modelPauses = createRedisModelPauses({
      redisUrl: team.redisUrl,
      keyPrefix: redisKeyPrefix,
      log: options.log,
      wallClockNow,
    })
    await modelPauses.connect()
  }
  metrics.watchUsageQueue(() => usage)
  metrics.watchLimiterQueue(() => limiter.queued())
  const gateway = createTeamGateway({
    team,
    findKeyBySecretHash: (secretHash) => service.keys.findBySecretHash(secretHash),
    keyCache: createKeyCache<KeyRecord>({ ttlMs: team.keyCacheTtlMs, now }),
    limiter,
    usage,
    metrics,
    log: options.log,
    now,
    wallClockNow,
  })
  // With Redis, a key changed on any replica (or by the CLI) leaves every replica's key cache at once.
  let keyEvents: KeyEvents | undefined
  if (team.redisUrl !== '') {
    keyEvents = createKeyEvents({
      redisUrl: team.redisUrl,
      keyPrefix: redisKeyPrefix,
      log: options.log,
      onKeyChanged: (keyId) => gateway.forgetKey(keyId),
      onMissedChanges: () => gateway.forgetAllKeys(),
    })
    await keyEvents.connect()
  }
  const events = keyEvents
  const onKeyChanged = (keyId: string) => {
    gateway.forgetKey(keyId)
    void events?.publish(keyId)
  }
  return {
    gateway,
    service,
    registry: metrics.registry,
    modelPauses,
    onKeyRequest: (listener) => metrics.onRequest(listener),
    adminRoutes: (adminKey, reload) =>
      adminKey === undefined ? [] : createAdminRoutes({ service, adminKey, onKeyChanged, ...(reload === undefined ? {} : { reload }) }),
    degraded() {
      const parts: string[] = []
      if (redisLimiter !== undefined && !redisLimiter.redisUp()) parts.push('redis')
      if (!usage.storeHealthy) parts.push('store')
      return parts
    },
    flushUsage: () => usage.flush(),
    async close() {
      const written = await usage.close()
      if (!written) options.log.warn({ queued: usage.queued }, 'usage store unavailable at shutdown; waiting usage records are lost')
      await redisLimiter?.close()
      await modelPauses?.close()
      await keyEvents?.close()
      await service.close()
    },
  }
}
