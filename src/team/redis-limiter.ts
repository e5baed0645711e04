import type { Redis } from 'ioredis'
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
 * A member key's rpm, tpm and concurrency counted in Redis, so every replica on the same Redis
 * and key prefix shares them (limits counted per replica let a member spend N times their rpm).
 *
 * One round trip per admission: a Lua script (EVALSHA) checks all three and takes them together,
 * or takes nothing. rpm and tpm are fixed windows (a counter whose TTL is the window, started by
 * its first request, like rate-limiter-flexible's); the clock is Redis's own (TIME), so replicas'
 * clocks need not agree. Concurrency is a sorted set of slot ids scored by the time the slot
 * expires: the request's deadline (plus a little), after which the request has ended anyway. The
 * script drops expired slots before counting, so a replica that dies holding slots leaks them
 * only until their requests' deadlines, never for good. settle (the tpm difference) and release
 * (the slot) are one command each, fire and forget, off the request path.
 *
 * Redis unreachable: `open` → the memory limiter (per-replica limits) until it is back; `closed` →
 * admissions are 'unavailable' (503). One log line per transition. ioredis reconnects by itself;
 * no command waits on a dead Redis (no offline queue, a short command timeout, no retries).
 */

export interface RedisLimiterLog {
  info(details: object, message: string): void
  warn(details: object, message: string): void
}

export interface RedisKeyLimiterOptions extends KeyLimiterOptions {
  readonly redisUrl: string
  /** Every Redis key starts with it; replicas with the same prefix share limits. */
  readonly keyPrefix: string
  readonly failure: 'open' | 'closed'
  readonly log: RedisLimiterLog
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

// KEYS: rpm counter, tpm counter, slot set. ARGV: rpm, tpm, maxConcurrent, tokens, window ms, slot id, slot ttl ms.
// Returns { refused limit ('' when admitted), retry ms, rpm remaining, rpm reset ms, tpm remaining, tpm reset ms }.
const ADMIT_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, window, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
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
  return { limit, retry, rpm - rpmUsed, rpmReset, tpm - tpmUsed, tpmReset }
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

// The tpm difference, only into a window that still exists (a new window starts from its own requests).
const SETTLE_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return 0
`

type AdmitReply = [string, number, number, number, number, number]

interface LimitCommands {
  toprouterAdmit(
    rpmKey: string,
    tpmKey: string,
    slotsKey: string,
    rpm: number,
    tpm: number,
    maxConcurrent: number,
    tokens: number,
    windowMs: number,
    slotId: string,
    slotTtlMs: number,
  ): Promise<AdmitReply>
  toprouterSettle(tpmKey: string, difference: number): Promise<number>
}

export function createRedisKeyLimiter(options: RedisKeyLimiterOptions): RedisKeyLimiter {
  const { now, keyPrefix, log } = options
  const windowMs = (options.windowSeconds ?? 60) * 1000
  const queue = createKeyQueue({ ...options, concurrencyRetryMs: CONCURRENCY_RETRY_MS })
  const fallback = createMemoryAdmitter({ ...options, onSlotFreed: (keyId) => queue.wake(keyId) })
  const redis = commandConnection(options.redisUrl, { commandTimeoutMs: options.commandTimeoutMs ?? 200, connectTimeoutMs: 1_000 })
  redis.defineCommand('toprouterAdmit', { numberOfKeys: 3, lua: ADMIT_SCRIPT })
  redis.defineCommand('toprouterSettle', { numberOfKeys: 1, lua: SETTLE_SCRIPT })
  const commands = redis as unknown as Redis & LimitCommands
  let up: boolean | undefined
  let closing = false
  let slotSequence = 0
  const slotIdBase = `${process.pid}-${Math.random().toString(36).slice(2, 10)}`

  function markUp(value: boolean, reason?: unknown): void {
    if (up === value || closing) return
    up = value
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

  async function tryAdmit(request: AdmitRequest): Promise<Admission> {
    if (redis.status !== 'ready') return whileDown(request)
    const { keyId, limits } = request
    const reserved = tokensToReserve(request)
    const slotId = `${slotIdBase}-${++slotSequence}`
    const slotTtlMs = Math.max(1, Math.ceil(request.deadlineAtMs - now())) + (options.slotGraceMs ?? SLOT_GRACE_MS)
    const slotsKey = keyOf(keyId, 'slots')
    const tpmKey = keyOf(keyId, 'tpm')
    let reply: AdmitReply
    try {
      reply = await commands.toprouterAdmit(
        keyOf(keyId, 'rpm'),
        tpmKey,
        slotsKey,
        limits.rpm,
        limits.tpm,
        limits.maxConcurrent,
        reserved,
        windowMs,
        slotId,
        slotTtlMs,
      )
    } catch (error: unknown) {
      markUp(false, error)
      return whileDown(request)
    }
    markUp(true)
    const [refused, retryMs, rpmRemaining, rpmResetMs, tpmRemaining, tpmResetMs] = reply
    const headers: RateLimitHeaders = {}
    if (limits.rpm > 0) describe(headers, 'requests', limits.rpm, rpmRemaining, rpmResetMs)
    if (limits.tpm > 0) describe(headers, 'tokens', limits.tpm, tpmRemaining, tpmResetMs)
    if (refused !== '') return refusal(refused as LimitName, retryMs, headers)
    let settled = false
    let released = false
    return {
      ok: true,
      permit: {
        headers,
        settle(actualTokens) {
          if (settled || limits.tpm <= 0 || actualTokens === undefined) return
          settled = true
          const difference = Math.ceil(actualTokens) - reserved
          if (difference !== 0) commands.toprouterSettle(tpmKey, difference).catch(ignore)
        },
        release() {
          if (released || limits.maxConcurrent <= 0) return
          released = true
          // Lost when Redis is down: the slot then expires at its deadline.
          redis.zrem(slotsKey, slotId).catch(ignore)
          queue.wake(keyId)
        },
      },
    }
  }

  function whileDown(request: AdmitRequest): Promise<Admission> {
    if (options.failure === 'closed') return Promise.resolve({ ok: false, limit: 'unavailable' })
    return fallback.tryAdmit(request)
  }

  return {
    redis,
    admit: (request) => queue.admit(request, tryAdmit),
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
