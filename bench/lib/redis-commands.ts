import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'

/**
 * The `team-redis` target's Redis commands, counted per phase: `INFO commandstats` of the target's
 * private redis-server (nothing else talks to it) before and after the phase, the bench's own
 * commands subtracted, over the requests the proxy answered in the phase (its `requests_total`,
 * /metrics scrapes excluded).
 *
 * Redis counts the commands a Lua script runs (`redis.call`) in commandstats too, so each command
 * name is put on one side: **sent** (a round trip from the proxy: EVALSHA, ZREM, …) or **run inside
 * the scripts** (TIME, PTTL, INCRBY, … — the names the proxy's Lua scripts call, read from the
 * measured dist/). "Redis commands per request" is the sent side.
 *
 * Both readings are taken with the proxy quiet: neither Redis's command count (the bench's own
 * taken out) nor the proxy's answered count moved over two polls 25 ms apart. Without that, the
 * requests still in flight when a phase's load stops (autocannon closes them) would charge their
 * settle and release to the next phase. (Waiting for the key's slot set to empty does not work:
 * a request whose client leaves while its admission is in flight in Redis is recorded first, then
 * admitted, and its slot is never released; it expires at the request's deadline + 5 s. The slots
 * so held are reported as `slotsHeldAfter`.)
 */

/** One phase's Redis figures (the JSON's `redis` on a phase). */
export interface RedisPhaseCounts {
  /** Requests the proxy answered in the phase: its `toprouter_proxy_requests_total`, /metrics scrapes excluded. */
  readonly answered: number
  /** Commands the proxy sent (round trips), the bench's own subtracted. */
  readonly sent: number
  readonly sentPerRequest: number
  /** Commands its Lua scripts ran inside Redis (Redis's own work; not round trips). */
  readonly inScripts: number
  readonly inScriptsPerRequest: number
  /** Calls per command name in the phase (both sides), the bench's own subtracted. */
  readonly byCommand: Readonly<Record<string, number>>
  /** The command names of `byCommand` that are sent (the rest ran inside the scripts). */
  readonly sentCommands: readonly string[]
  /** Calls Redis rejected or that failed (commandstats `rejected_calls` + `failed_calls`). */
  readonly failedCalls: number
  /** False when the proxy was not quiet within the wait: the counts then include a neighbour's. */
  readonly quiet: boolean
  /**
   * The key's concurrency slots still held in Redis once the proxy was quiet after the phase: none
   * of its requests is in flight then, so these are slots never released (see above).
   */
  readonly slotsHeldAfter: number
  /** The same before the phase: `slotsHeldAfter − slotsHeldBefore` were left by the phase (unless some expired meanwhile). */
  readonly slotsHeldBefore: number
  /** redis-server's utime+stime over the phase per response the load counted, µs (informational). */
  readonly serverCpuUsPerReq: number
}

export interface RedisSnapshot {
  readonly calls: ReadonlyMap<string, number>
  readonly failed: number
  readonly answered: number
  /** The bench's own commands processed before this snapshot's INFO. */
  readonly own: ReadonlyMap<string, number>
  readonly quiet: boolean
  /** ZCARD of the key's slot set, read after the counts. */
  readonly slotsHeld: number
}

export interface RedisCommandCounter {
  /** Waits for the proxy to be quiet; the counts are the last reading's. */
  snapshot(): Promise<RedisSnapshot>
  /** The phase since `before`, once the proxy is quiet again (the server CPU figure is added by the caller). */
  since(before: RedisSnapshot): Promise<Omit<RedisPhaseCounts, 'serverCpuUsPerReq'>>
  /** `KEYS <prefix>*`, for the check that the limiter's keys are where the bench looks. */
  keys(): Promise<string[]>
  /** `INFO server`'s redis_version. */
  version(): Promise<string>
  close(): void
}

export interface RedisCounterOptions {
  readonly redisUrl: string
  readonly proxyUrl: string
  readonly keyPrefix: string
  /** The key's concurrency slot set, `<prefix>limit:{<key id>}:slots` (src/team/redis-limiter.ts): its size is reported. */
  readonly slotsKey: string
  /** Command names (lower case) the proxy's Lua scripts run; see `scriptCommandsOf`. */
  readonly scriptCommands: ReadonlySet<string>
}

/** Quiet: neither Redis's command count (the bench's own taken out) nor the proxy's answered count moved over this many polls. */
const QUIET_POLLS = 2
const POLL_MS = 25
const QUIET_WAIT_MS = 5_000

export async function createRedisCommandCounter(options: RedisCounterOptions): Promise<RedisCommandCounter> {
  const redis = new Redis(options.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
  redis.on('error', () => {})
  await redis.connect()
  // What this connection sent after connecting (ioredis's own HELLO and ready check come before the first snapshot).
  const own = new Map<string, number>()
  const send = async <T>(name: string, run: () => Promise<T>): Promise<T> => {
    const result = await run()
    own.set(name, (own.get(name) ?? 0) + 1)
    return result
  }

  /** One reading: commandstats (as of just before this INFO) and the proxy's answered count. */
  async function read(): Promise<{
    calls: Map<string, number>
    failed: number
    own: Map<string, number>
    others: number
    answered: number
  }> {
    const ownBefore = new Map(own)
    const stats = parseCommandStats(await send('info', () => redis.info('commandstats')))
    const answered = await answeredByProxy(options.proxyUrl)
    let others = 0
    for (const calls of stats.calls.values()) others += calls
    for (const mine of ownBefore.values()) others -= mine
    return { ...stats, own: ownBefore, others, answered }
  }

  async function snapshot(): Promise<RedisSnapshot> {
    const deadline = performance.now() + QUIET_WAIT_MS
    let last = await read()
    let still = 0
    let quiet = true
    while (still < QUIET_POLLS) {
      await sleep(POLL_MS)
      const next = await read()
      still = next.others === last.others && next.answered === last.answered ? still + 1 : 0
      last = next
      if (still < QUIET_POLLS && performance.now() > deadline) {
        quiet = false
        break
      }
    }
    const slotsHeld = await send('zcard', () => redis.zcard(options.slotsKey))
    return { calls: last.calls, failed: last.failed, answered: last.answered, own: last.own, quiet, slotsHeld }
  }

  return {
    snapshot,
    async since(before) {
      const after = await snapshot()
      const byCommand: Record<string, number> = {}
      for (const [name, calls] of after.calls) {
        const mine = (after.own.get(name) ?? 0) - (before.own.get(name) ?? 0)
        const delta = calls - (before.calls.get(name) ?? 0) - mine
        if (delta !== 0) byCommand[name] = delta
      }
      const names = Object.keys(byCommand).sort()
      const sentCommands = names.filter((name) => !options.scriptCommands.has(name))
      const sent = sentCommands.reduce((sum, name) => sum + (byCommand[name] ?? 0), 0)
      const inScripts = names.filter((name) => options.scriptCommands.has(name)).reduce((sum, name) => sum + (byCommand[name] ?? 0), 0)
      const answered = after.answered - before.answered
      const per = (n: number) => (answered > 0 ? n / answered : Number.NaN)
      return {
        answered,
        sent,
        sentPerRequest: per(sent),
        inScripts,
        inScriptsPerRequest: per(inScripts),
        byCommand: Object.fromEntries(names.map((name) => [name, byCommand[name] ?? 0])),
        sentCommands,
        failedCalls: after.failed - before.failed,
        quiet: before.quiet && after.quiet,
        slotsHeldAfter: after.slotsHeld,
        slotsHeldBefore: before.slotsHeld,
      }
    },
    keys: () => redis.keys(`${options.keyPrefix}*`),
    async version() {
      return /^redis_version:(\S+)/m.exec(await redis.info('server'))?.[1] ?? 'unknown'
    },
    close: () => redis.disconnect(),
  }
}

/** `cmdstat_<name>:calls=N,usec=…,rejected_calls=N,failed_calls=N` per line (sub-commands as `client|setname`). */
export function parseCommandStats(text: string): { calls: Map<string, number>; failed: number } {
  const calls = new Map<string, number>()
  let failed = 0
  for (const match of text.matchAll(/^cmdstat_(\S+?):calls=(\d+),(.*)$/gm)) {
    calls.set(match[1] as string, Number(match[2]))
    for (const bad of (match[3] ?? '').matchAll(/(?:rejected_calls|failed_calls)=(\d+)/g)) failed += Number(bad[1])
  }
  return { calls, failed }
}

/** The proxy's `toprouter_proxy_requests_total`, summed over every route but /metrics. */
async function answeredByProxy(proxyUrl: string): Promise<number> {
  const text = await fetch(`${proxyUrl}/metrics`).then((r) => r.text())
  let total = 0
  for (const match of text.matchAll(/^toprouter_proxy_requests_total\{([^}]*)\} (\S+)$/gm)) {
    if (/(?:^|,)route="\/metrics"/.test(match[1] ?? '')) continue
    total += Number(match[2])
  }
  return total
}

/** A key's limiter key in Redis, as src/team/redis-limiter.ts names it: `<prefix>limit:{<key id>}:<kind>`. */
export function limiterKey(keyPrefix: string, keyId: string, kind: 'rpm' | 'tpm' | 'slots'): string {
  return `${keyPrefix}limit:{${keyId}}:${kind}`
}

/**
 * The command names (lower case) the proxy's Lua scripts run, read from the measured dist/ copy:
 * every `redis.call('NAME'` / `redis.pcall('NAME'` in its team/*.js files.
 */
export function scriptCommandsOf(distTeamDir: string): Set<string> {
  const names = new Set<string>()
  for (const file of readdirSync(distTeamDir)) {
    if (!file.endsWith('.js')) continue
    const text = readFileSync(join(distTeamDir, file), 'utf8')
    for (const match of text.matchAll(/redis\.p?call\(\s*['"]([A-Za-z]+)['"]/g)) names.add((match[1] as string).toLowerCase())
  }
  return names
}
