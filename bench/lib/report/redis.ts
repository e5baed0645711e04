import type { PhaseResult } from '../load/phase.js'
import type { RedisPhaseCounts } from '../redis-commands.js'
import type { RedisServerInfo, TargetResult } from '../targets.js'
import { fmt } from './format.js'

/**
 * The `team-redis` target's Redis commands per request, by phase, and what fails the run about them.
 *
 * What the proxy sends per chat request (src/team/redis-limiter.ts), with the bench's key (rpm,
 * tpm and maxConcurrent all > 0):
 *   1. admission: one EVALSHA of the admission script (EVAL the first time on a connection) — always;
 *   2. finish: one EVALSHA of the finish script, which settles the tpm difference (the fake
 *      upstream's 60 / 32 tokens never equal the reservation) and releases the concurrency slot
 *      together — when the request ends (a ZREM alone when there is nothing to settle).
 * So a request that completes costs exactly 2 commands, one cut off without usage 2 as well (its
 * release is a ZREM). More than 2 per request in any phase means something new is on the request
 * path, and fails the run; in (d), one request at a time, every request completes, so anything but
 * exactly 2 fails it (fewer: the limits did not all go through Redis).
 */
export const REDIS_SENT_PER_REQUEST_MAX = 2

export interface RedisRow {
  readonly row: string
  /** Chat rows are held to the limit; GET /models is shown only. */
  readonly chat: boolean
  /** (d): every request completes, so the count must be exactly the limit. */
  readonly exact: boolean
  readonly counts: RedisPhaseCounts
}

/** The JSON's `redisCommands`: the server, and one row per measured load. */
export interface RedisSummary {
  readonly server: RedisServerInfo | undefined
  readonly rows: RedisRow[]
  readonly maxSentPerRequest: number
}

export function redisRows(target: TargetResult): RedisRow[] {
  const { phases } = target
  const rows: RedisRow[] = []
  const add = (row: string, kind: 'chat' | 'exact' | 'other', phase: PhaseResult | undefined, counts = phase?.redis) => {
    if (counts !== undefined) rows.push({ row, chat: kind !== 'other', exact: kind === 'exact', counts })
  }
  add('(a) non-streaming, max throughput', 'chat', phases.throughput)
  add('(b) paced', 'chat', phases.paced)
  add('(c) streaming (per stream)', 'chat', phases.stream)
  add('(d) unloaded, non-streaming', 'exact', phases.unloaded)
  add('(d) unloaded, streams (per stream)', 'exact', phases.unloaded, phases.unloaded?.redisStreams)
  add('(e) GET /models', 'other', phases.models)
  return rows
}

export function redisSummary(targets: TargetResult[]): RedisSummary | undefined {
  const target = targets.find((t) => t.target === 'team-redis')
  if (target === undefined) return undefined
  return { server: target.redisServer, rows: redisRows(target), maxSentPerRequest: REDIS_SENT_PER_REQUEST_MAX }
}

/** What fails the run about team-redis's Redis commands (its errors, non-2xx and usage are checked like team's). */
export function redisProblems(target: TargetResult): string[] {
  const rows = redisRows(target)
  if (rows.length === 0) return [`${target.label}: no Redis command counts were taken`]
  const problems: string[] = []
  for (const { row, chat, exact, counts } of rows) {
    const where = `${target.label} ${row}`
    if (!counts.quiet) problems.push(`${where}: the proxy was not quiet within 5 s around the phase, so its Redis counts are not exact`)
    if (counts.failedCalls > 0) problems.push(`${where}: Redis rejected or failed ${counts.failedCalls} commands`)
    if (!chat) continue
    const perRequest = counts.sentPerRequest
    const sent = `${fmt(perRequest, 3)} Redis commands sent per request (${describe(counts) || 'none'})`
    const max = REDIS_SENT_PER_REQUEST_MAX
    if (!Number.isFinite(perRequest)) problems.push(`${where}: the proxy answered no requests, so no Redis commands per request`)
    else if (perRequest > max)
      problems.push(`${where}: ${sent}, more than the ${max} the limiter should send (admission; settle + release together)`)
    else if (exact && perRequest !== max)
      problems.push(`${where}: ${sent}, not the ${max} of a request that completes (admission; settle + release together)`)
  }
  return problems
}

/** The markdown section: per row, the commands sent per request (by command), those run inside the scripts, Redis's CPU. */
export function redisSection(summary: RedisSummary): string[] {
  const server = summary.server
  const lines = [
    '### Redis commands per request (`team-redis`)',
    '',
    `Its own redis-server${server === undefined ? '' : ` ${server.version}, key prefix \`${server.keyPrefix}\``}: \`INFO commandstats\` before and after each phase, each taken once the proxy is quiet (Redis's command count and the proxy's answered count still over two polls 25 ms apart), the bench's own commands subtracted, over the requests the proxy answered in the phase (its \`requests_total\`). **Sent** = round trips from the proxy; **inside the scripts** = the commands its Lua scripts ran (${server === undefined ? '' : `${server.scriptCommands.join(', ')}; `}Redis counts them too). redis-server's CPU is per response the load counted, for information.`,
    '',
    '| load | requests answered | commands sent | sent per request | sent per request, by command | inside the scripts per request | redis-server CPU µs/req | slots held before → after |',
    '|---|---:|---:|---:|---|---:|---:|---:|',
  ]
  for (const { row, counts } of summary.rows) {
    lines.push(
      `| ${row} | ${counts.answered} | ${counts.sent} | ${fmt(counts.sentPerRequest, 3)} | ${describe(counts) || '–'} | ${fmt(counts.inScriptsPerRequest, 2)} | ${fmt(counts.serverCpuUsPerReq)} | ${counts.slotsHeldBefore} → ${counts.slotsHeldAfter} |`,
    )
  }
  lines.push(
    '',
    `A chat request may send at most ${summary.maxSentPerRequest} commands (the admission script, then one command that settles the tokens and releases the slot together): more fails the run, and so does anything but exactly ${summary.maxSentPerRequest} in (d), where every request completes.`,
    "_Slots held_: the key's concurrency slots in Redis with the proxy quiet (no request in flight), so slots never released: a request whose client leaves while its admission is in Redis is recorded (finished) before it is admitted, and the slot it then gets is not given back; each expires at its request's deadline + 5 s. They come from the requests autocannon cuts off when a phase (or the warm-up) stops. Shown, not enforced.",
    '',
  )
  return lines
}

/** `evalsha 2.000, zrem 1.000`: the sent commands per request. */
function describe(counts: RedisPhaseCounts): string {
  return counts.sentCommands
    .map((name) => `${name} ${fmt(counts.answered > 0 ? (counts.byCommand[name] ?? 0) / counts.answered : Number.NaN, 3)}`)
    .join(', ')
}
