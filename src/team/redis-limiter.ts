import type { Redis } from 'ioredis'
import type { EventLog } from '../logging.js'
import { type BudgetWindow, createMemoryBudgetLedger, NOTHING_SPENT_BEFORE, type SpendSince } from './budget.js'
import { nextPeriodStartMs } from './cost.js'
import { createKeyQueue } from './key-queue.js'
import {
  type Admission,
  type AdmitRequest,
  createMemoryAdmitter,
  describe,
  type KeyLimiter,
  type KeyLimiterOptions,
  type LimitName,
  type RateLimitHeaders,
  refusal,
  tokensToReserve,
} from './limiter.js'
import { commandConnection } from './redis-connection.js'

/**
 * A member key's budget, rpm, tpm and concurrency counted in Redis, so every replica on the same
 * Redis and key prefix shares them (limits counted per replica let a member spend N times their
 * rpm, and a budget N times over).
 *
 * One round trip per admission: a Lua script (EVALSHA) checks all four and takes them together,
 * or takes nothing. A budget is a hash of the period's spent tokens and USD. The first request of
 * a period anywhere in the fleet finds it missing: that replica reads the spend from the usage
 * store, seeds the hash (only if still missing, so replicas racing to seed agree) and asks again —
 * two more round trips, once per key and period for the whole fleet. Spend added while the hash is
 * missing is not counted twice: it is in the store the seed reads (the records of the last
 * `usageFlushMs` still on their way may be missed, as with one replica). rpm and tpm are fixed windows (a counter whose TTL is the window, started by
 * its first request, like rate-limiter-flexible's); the clock is Redis's own (TIME), so replicas'
 * clocks need not agree. Concurrency is a sorted set of slot ids scored by the time the slot
 * expires: the request's deadline (plus a little), after which the request has ended anyway. The
 * script drops expired slots before counting, so a replica that dies holding slots leaks them
 * only until their requests' deadlines, never for good. settle (the tpm difference and the
 * budget's spend) and release (the slot), which a finished request does together, are one command,
 * fire and forget, off the request path.
 *
 * Redis unreachable: `open` → the memory limiter (per-replica limits) until it is back; `closed` →
 * admissions are 'unavailable' (503). One log line per transition. ioredis reconnects by itself;
 * no command waits on a dead Redis (no offline queue, a short command timeout, no retries).
 */

export interface RedisKeyLimiterOptions extends Omit<KeyLimiterOptions, 'budgets'> {
  readonly redisUrl: string
  /** Seeds a budget period's counter: the key's spend recorded in the usage store since its start. @default nothing spent */
  readonly spendSince?: SpendSince
  /** Wall-clock ms: when a budget period's counter may expire. @default Date.now */
  readonly wallClockNow?: () => number
  /** Every Redis key starts with it; replicas with the same prefix share limits. */
  readonly keyPrefix: string
  readonly failure: 'open' | 'closed'
  readonly log: EventLog
  /** Per command. @default 200 */
  readonly commandTimeoutMs?: number
  /** How long a slot outlives its request's deadline. @default 5000 */
  readonly slotGraceMs?: number
}

export interface RedisKeyLimiter extends KeyLimiter {
  /** Connects; resolves even when Redis is down (then it keeps trying in the background). */
  connect(): Promise<void>
  /** True while admissions use the shared counters. */
  redisUp(): boolean
  close(): Promise<void>
  /** The connection, for tests (counting commands). */
  readonly redis: Redis
}

/** A slot outlives its request's deadline by this much (a dead replica's slot is free after it). */
const SLOT_GRACE_MS = 5_000
/** The head of a queue refused for concurrency asks Redis again this often (other replicas' releases wake no one here). */
const CONCURRENCY_RETRY_MS = 50

/** A budget counter outlives its period by this much; a `total` one lives this long, then is seeded again. */
const BUDGET_GRACE_MS = 3_600_000
const TOTAL_BUDGET_TTL_MS = 7 * 86_400_000

// KEYS: rpm counter, tpm counter, slot set, budget hash. ARGV: rpm, tpm, maxConcurrent, tokens, window ms,
// slot id, slot ttl ms, budget tokens, budget usd ('' = no such budget; both '' = no budget hash).
// Returns { refused limit ('' when admitted), retry ms, rpm remaining, rpm reset ms, tpm remaining, tpm reset ms,
// spent tokens, spent usd } ('unseeded': the budget hash is missing; numbers as strings where Lua would truncate).
const ADMIT_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, window, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local budgetTokens, budgetUsd = tonumber(ARGV[8]), tonumber(ARGV[9])
if budgetTokens or budgetUsd then
  local spent = redis.call('HMGET', KEYS[4], 'tokens', 'usd')
  if not spent[1] then return { 'unseeded', 0, 0, 0, 0, 0, '0', '0' } end
  local spentTokens, spentUsd = tonumber(spent[1]), tonumber(spent[2])
  if budgetTokens and spentTokens >= budgetTokens then return { 'budget-tokens', 0, 0, 0, 0, 0, spent[1], spent[2] } end
  if budgetUsd and spentUsd >= budgetUsd then return { 'budget-usd', 0, 0, 0, 0, 0, spent[1], spent[2] } end
end
local function peek(key)
  local left = redis.call('PTTL', key)
  if left < 0 then
    redis.call('DEL', key)
    return 0, window
  end
  return tonumber(redis.call('GET', key)), left
end
local rpmUsed, rpmReset, tpmUsed, tpmReset = 0, window, 0, window
if rpm > 0 then rpmUsed, rpmReset = peek(KEYS[1]) end
if tpm > 0 then tpmUsed, tpmReset = peek(KEYS[2]) end
local function answer(limit, retry)
  return { limit, retry, rpm - rpmUsed, rpmReset, tpm - tpmUsed, tpmReset, '', '' }
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then return answer('concurrency', 0) end
end
if rpm > 0 and rpmUsed + 1 > rpm then return answer('rpm', rpmReset) end
if tpm > 0 and tpmUsed + tokens > tpm then return answer('tpm', tpmReset) end
local function take(key, n, reset)
  if redis.call('INCRBY', key, n) == n then redis.call('PEXPIRE', key, reset) end
end
if rpm > 0 then take(KEYS[1], 1, rpmReset); rpmUsed = rpmUsed + 1 end
if tpm > 0 then take(KEYS[2], tokens, tpmReset); tpmUsed = tpmUsed + tokens end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[6])
  if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
end
return answer('', 0)
`

// KEYS: tpm counter, budget hash, slot set. ARGV: the tpm difference, the budget's tokens, its USD (each 0 for
// none), the slot id ('' for none). Spend only into a counter that still exists: a new tpm window starts
// from its own requests, and a missing budget hash is seeded from the store, which has this request's record.
const FINISH_SCRIPT = `
if ARGV[1] ~= '0' and redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], ARGV[1]) end
if (ARGV[2] ~= '0' or ARGV[3] ~= '0') and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'tokens', ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[2], 'usd', ARGV[3])
end
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[3], ARGV[4]) end
return 0
`

// KEYS: budget hash. ARGV: tokens, usd, ttl ms. Only when missing: replicas seeding at once agree on the first.
const SEED_SCRIPT = `
if redis.call('HSETNX', KEYS[1], 'tokens', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'usd', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 0
`

type AdmitReply = [string, number, number, number, number, number, string, string]

interface LimitCommands {
  toprouterAdmit(
    rpmKey: string,
    tpmKey: string,
    slotsKey: string,
    budgetKey: string,
    rpm: number,
    tpm: number,
    maxConcurrent: number,
    tokens: number,
    windowMs: number,
    slotId: string,
    slotTtlMs: number,
    budgetTokens: string,
    budgetUsd: string,
  ): Promise<AdmitReply>
  toprouterFinish(
    tpmKey: string,
    budgetKey: string,
    slotsKey: string,
    difference: number,
    tokens: number,
    usd: number,
    slotId: string,
  ): Promise<number>
  toprouterSeed(budgetKey: string, tokens: number, usd: number, ttlMs: number): Promise<number>
}

export function createRedisKeyLimiter(options: RedisKeyLimiterOptions): RedisKeyLimiter {
  const { now, keyPrefix, log } = options
  const windowMs = (options.windowSeconds ?? 60) * 1000
  const queue = createKeyQueue({ ...options, concurrencyRetryMs: CONCURRENCY_RETRY_MS })
  const spendSince = options.spendSince ?? NOTHING_SPENT_BEFORE
  const wallClockNow = options.wallClockNow ?? Date.now
  // While Redis is down: this replica's own counts. Each outage starts a new budget ledger, so its
  // spend is read from the usage store as it is then, not left from an earlier outage.
  let outageBudgets = createMemoryBudgetLedger(spendSince)
  const fallback = createMemoryAdmitter({
    ...options,
    budgets: { spent: (window) => outageBudgets.spent(window), add: (...spend) => outageBudgets.add(...spend) },
    onSlotFreed: (keyId) => queue.wake(keyId),
  })
  const redis = commandConnection(options.redisUrl, { commandTimeoutMs: options.commandTimeoutMs ?? 200, connectTimeoutMs: 1_000 })
  redis.defineCommand('toprouterAdmit', { numberOfKeys: 4, lua: ADMIT_SCRIPT })
  redis.defineCommand('toprouterFinish', { numberOfKeys: 3, lua: FINISH_SCRIPT })
  redis.defineCommand('toprouterSeed', { numberOfKeys: 1, lua: SEED_SCRIPT })
  const commands = redis as unknown as Redis & LimitCommands
  let up: boolean | undefined
  let closing = false
  let slotSequence = 0
  const slotIdBase = `${process.pid}-${Math.random().toString(36).slice(2, 10)}`

  function markUp(value: boolean, reason?: unknown): void {
    if (up === value || closing) return
    up = value
    if (!value) outageBudgets = createMemoryBudgetLedger(spendSince)
    if (value) log.info({ redis: 'up' }, 'Redis limits store reachable: rpm / tpm / concurrency are shared by the replicas')
    else if (options.failure === 'open') {
      log.warn({ redis: 'down', err: reason }, 'Redis limits store unreachable: limits are counted per replica until it is back')
    } else log.warn({ redis: 'down', err: reason }, 'Redis limits store unreachable: requests are refused (503) until it is back')
  }
  redis.on('ready', () => markUp(true))
  redis.on('close', () => markUp(false))
  // ioredis reports connection errors here too; the transition is logged once, by markUp.
  redis.on('error', (error: unknown) => {
    if (redis.status !== 'ready') markUp(false, error)
  })

  const keyOf = (keyId: string, kind: 'rpm' | 'tpm' | 'slots') => `${keyPrefix}limit:{${keyId}}:${kind}`
  // The same hash tag as the limit keys, so one script may touch them all (Redis Cluster).
  const budgetKeyOf = (window: BudgetWindow | undefined, keyId: string) =>
    window === undefined
      ? `${keyPrefix}limit:{${keyId}}:no-budget`
      : `${keyPrefix}limit:{${keyId}}:budget:${window.period}:${window.startMs}`
  const seeding = new Map<string, Promise<void>>()

  /** Seeds a budget period's counter from the usage store (once per period per replica at a time). */
  function seed(window: BudgetWindow, budgetKey: string): Promise<void> {
    let pending = seeding.get(budgetKey)
    if (pending === undefined) {
      pending = spendSince(window.keyId, new Date(window.startMs))
        .then((spend) => {
          const ttlMs =
            window.period === 'total'
              ? TOTAL_BUDGET_TTL_MS
              : nextPeriodStartMs(window.period, window.startMs) - wallClockNow() + BUDGET_GRACE_MS
          return commands.toprouterSeed(budgetKey, spend.tokens, spend.usd, Math.max(1, Math.ceil(ttlMs)))
        })
        .then(ignore)
        .finally(() => seeding.delete(budgetKey))
      seeding.set(budgetKey, pending)
    }
    return pending
  }

  async function tryAdmit(request: AdmitRequest, seeded = false): Promise<Admission> {
    if (redis.status !== 'ready') return whileDown(request)
    const { keyId, limits, budget } = request
    const reserved = tokensToReserve(request)
    const slotId = `${slotIdBase}-${++slotSequence}`
    const slotTtlMs = Math.max(1, Math.ceil(request.deadlineAtMs - now())) + (options.slotGraceMs ?? SLOT_GRACE_MS)
    const slotsKey = keyOf(keyId, 'slots')
    const tpmKey = keyOf(keyId, 'tpm')
    const budgetKey = budgetKeyOf(budget, keyId)
    let reply: AdmitReply
    try {
      reply = await commands.toprouterAdmit(
        keyOf(keyId, 'rpm'),
        tpmKey,
        slotsKey,
        budgetKey,
        limits.rpm,
        limits.tpm,
        limits.maxConcurrent,
        reserved,
        windowMs,
        slotId,
        slotTtlMs,
        budget?.tokens == null ? '' : String(budget.tokens),
        budget?.usd == null ? '' : String(budget.usd),
      )
    } catch (error: unknown) {
      markUp(false, error)
      return whileDown(request)
    }
    markUp(true)
    const [refused, retryMs, rpmRemaining, rpmResetMs, tpmRemaining, tpmResetMs, spentTokens, spentUsd] = reply
    if (refused === 'unseeded' && budget !== undefined) {
      // Seeded and still missing (it expired in between): admit on the limits alone this once.
      if (seeded) return tryAdmit({ ...request, budget: undefined }, true)
      try {
        await seed(budget, budgetKey)
      } catch {
        if (redis.status !== 'ready') return whileDown(request)
        return { ok: false, limit: 'unavailable', what: 'budget' }
      }
      return tryAdmit(request, true)
    }
    if (refused === 'budget-tokens' || refused === 'budget-usd') {
      const unit = refused === 'budget-tokens' ? 'tokens' : 'usd'
      const spent = Number(unit === 'tokens' ? spentTokens : spentUsd)
      return { ok: false, limit: 'budget', unit, spent, budget: (unit === 'tokens' ? budget?.tokens : budget?.usd) ?? 0 }
    }
    const headers: RateLimitHeaders = {}
    if (limits.rpm > 0) describe(headers, 'requests', limits.rpm, rpmRemaining, rpmResetMs)
    if (limits.tpm > 0) describe(headers, 'tokens', limits.tpm, tpmRemaining, tpmResetMs)
    if (refused !== '') return refusal(refused as LimitName, retryMs, headers)
    let settled = false
    let released = false
    let difference = 0
    let tokens = 0
    let usd = 0
    let releaseSlot = false
    let sending = false
    // The settle and the release come together when a request ends: sent as one command, a
    // microtask later (ahead of any admission the release wakes, on the same connection).
    const send = () => {
      sending = false
      const slot = releaseSlot ? slotId : ''
      if (difference === 0 && tokens === 0 && usd === 0) {
        if (slot !== '') redis.zrem(slotsKey, slot).catch(ignore)
      } else commands.toprouterFinish(tpmKey, budgetKey, slotsKey, difference, tokens, usd, slot).catch(ignore)
      difference = tokens = usd = 0
      releaseSlot = false
    }
    const sendSoon = () => {
      if (sending) return
      sending = true
      queueMicrotask(send)
    }
    return {
      ok: true,
      permit: {
        headers,
        settle(actualTokens, costUsd) {
          if (settled) return
          settled = true
          difference = limits.tpm > 0 && actualTokens !== undefined ? Math.ceil(actualTokens) - reserved : 0
          tokens = budget === undefined ? 0 : Math.ceil(actualTokens ?? 0)
          usd = budget === undefined ? 0 : (costUsd ?? 0)
          if (difference !== 0 || tokens !== 0 || usd !== 0) sendSoon()
        },
        release() {
          if (released || limits.maxConcurrent <= 0) return
          released = true
          // Lost when Redis is down: the slot then expires at its deadline.
          releaseSlot = true
          sendSoon()
          queue.wake(keyId)
        },
      },
    }
  }

  function whileDown(request: AdmitRequest): Promise<Admission> {
    if (options.failure === 'closed') return Promise.resolve({ ok: false, limit: 'unavailable', what: 'limits' })
    return fallback.tryAdmit(request)
  }

  return {
    redis,
    admit: (request) => queue.admit(request, (queued) => tryAdmit(queued)),
    queued: () => queue.queued(),
    redisUp: () => up === true,
    async connect() {
      try {
        await redis.connect()
      } catch (error: unknown) {
        markUp(false, error)
      }
    },
    async close() {
      closing = true
      redis.disconnect()
    },
  }
}

function ignore(): void {}
