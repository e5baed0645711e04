import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import BetterSqlite3 from 'better-sqlite3'
import type { ProxyCommand } from './processes.js'

/**
 * The `team` target's store and key: the proxy in team mode on a fresh SQLite file in a temporary
 * directory, with one gateway key made by the proxy's own CLI (`keys create`, no server) whose rpm
 * and tpm are far above anything the run sends, so no request is ever refused. Usage recording is on
 * (team mode always records), batched every `team.usageFlushMs` (default 1000 ms). After the run,
 * the store's usage rows for the key are counted and compared with the requests the proxy answered
 * for it (its request log lines naming the key): a usage record lost is a failed run.
 *
 * The `team-redis` target is the same with `team.redisUrl` (its own redis-server, lib/redis-server.ts)
 * and a `team.redisKeyPrefix` of its own, and a key that also has a concurrency limit, so each
 * request takes the whole Redis path: the admission script checks and takes rpm, tpm and a slot,
 * the end settles tpm and releases the slot.
 */

export const TEAM_KEY_NAME = 'bench'
/** Per minute. A full run sends well under a million requests, ~110 estimated tokens each. */
export const TEAM_KEY_RPM = 100_000_000
export const TEAM_KEY_TPM = 10_000_000_000
/** team-redis only (0, unlimited, for team): far above the 64 requests the load has in flight at most. */
export const TEAM_REDIS_KEY_MAX_CONCURRENT = 100_000

/** What makes a store the team-redis target's. */
export interface TeamRedisOptions {
  readonly url: string
  readonly keyPrefix: string
}

export interface TeamStore {
  /** The temporary directory holding the config and the SQLite file (`teamDirectory`); the target removes it. */
  readonly dir: string
  readonly configPath: string
  readonly storePath: string
  readonly keyId: string
  /** The gateway key's secret, `tpk_…`: what the load sends as its Bearer token. */
  readonly secret: string
  readonly keyPrefix: string
  /** The key's concurrency limit (0: none). */
  readonly maxConcurrent: number
}

/** A fresh temporary directory for a team target's store (and, for team-redis, its redis-server's directory). */
export function teamDirectory(): string {
  return mkdtempSync(join(tmpdir(), 'toprouter-bench-team-'))
}

/**
 * A fresh store in `dir`, its team-mode config, and one key created with the CLI; with `redis`,
 * the config also has `team.redisUrl` and `team.redisKeyPrefix`, and the key a concurrency limit.
 */
export function createTeamStore(proxy: ProxyCommand, dir: string, redis?: TeamRedisOptions): TeamStore {
  const storePath = join(dir, 'team.db')
  const configPath = join(dir, 'config.yaml')
  // Only what team mode needs; everything else is the default config, as for the `proxy` target.
  const lines = ['team:', '  enabled: true', `  storeUrl: ${JSON.stringify(`sqlite:${storePath}`)}`]
  if (redis !== undefined) lines.push(`  redisUrl: ${JSON.stringify(redis.url)}`, `  redisKeyPrefix: ${JSON.stringify(redis.keyPrefix)}`)
  writeFileSync(configPath, `${lines.join('\n')}\n`)
  const maxConcurrent = redis === undefined ? 0 : TEAM_REDIS_KEY_MAX_CONCURRENT
  const args = ['keys', 'create', '--name', TEAM_KEY_NAME, '--rpm', String(TEAM_KEY_RPM), '--tpm', String(TEAM_KEY_TPM)]
  if (maxConcurrent > 0) args.push('--max-concurrent', String(maxConcurrent))
  const output = execFileSync(process.execPath, [proxy.main, ...args, '--json', '--config', configPath], {
    cwd: proxy.cwd,
    encoding: 'utf8',
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' },
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 30_000,
  })
  const record = JSON.parse(output) as { id?: unknown; key?: unknown; prefix?: unknown }
  if (typeof record.key !== 'string' || !record.key.startsWith('tpk_') || typeof record.id !== 'string') {
    throw new Error(`keys create printed no key record: ${output.slice(0, 500)}`)
  }
  return { dir, configPath, storePath, keyId: record.id, secret: record.key, keyPrefix: String(record.prefix), maxConcurrent }
}

/** What the bench checks of the team target once its proxy has exited (the drain flushes usage). */
export interface UsageCheck {
  readonly keyName: string
  readonly keyPrefix: string
  readonly rpm: number
  readonly tpm: number
  /** 0: no concurrency limit (the team target's key); team-redis's key has one. */
  readonly maxConcurrent: number
  /** Chat requests the proxy answered for the key: its `request` log lines naming the key, any status. */
  readonly answeredRequests: number
  /** Rows in the store's `usage` table for the key. */
  readonly usageRows: number
  /** Of those rows, how many have status 200 and ending `complete` with token counts. */
  readonly completeRowsWithTokens: number
  /** …of which streams: their tokens come from the usage chunk the gateway asked for. */
  readonly completeStreamRowsWithTokens: number
  /** Chat responses the load generator counted in the measured phases (warm-ups not included): a lower bound. */
  readonly measuredChatResponses: number
  /** usageRows === answeredRequests, and answeredRequests ≥ measuredChatResponses. */
  readonly ok: boolean
}

export function checkUsage(store: TeamStore, logFile: string, measuredChatResponses: number): UsageCheck {
  const answeredRequests = answeredForKey(logFile, TEAM_KEY_NAME)
  const db = new BetterSqlite3(store.storePath, { readonly: true, fileMustExist: true })
  let usageRows: number
  let completeRowsWithTokens: number
  let completeStreamRowsWithTokens: number
  try {
    const count = (sql: string) => (db.prepare(sql).get(store.keyId) as { n: number }).n
    const complete = "key_id = ? AND status = 200 AND ending = 'complete' AND total_tokens IS NOT NULL"
    usageRows = count('SELECT COUNT(*) AS n FROM usage WHERE key_id = ?')
    completeRowsWithTokens = count(`SELECT COUNT(*) AS n FROM usage WHERE ${complete}`)
    completeStreamRowsWithTokens = count(`SELECT COUNT(*) AS n FROM usage WHERE ${complete} AND stream = 1`)
  } finally {
    db.close()
  }
  return {
    keyName: TEAM_KEY_NAME,
    keyPrefix: store.keyPrefix,
    rpm: TEAM_KEY_RPM,
    tpm: TEAM_KEY_TPM,
    maxConcurrent: store.maxConcurrent,
    answeredRequests,
    usageRows,
    completeRowsWithTokens,
    completeStreamRowsWithTokens,
    measuredChatResponses,
    ok: usageRows === answeredRequests && answeredRequests >= measuredChatResponses,
  }
}

/** The proxy's one-line-per-request log entries for chat requests made with the key named `keyName`. */
function answeredForKey(logFile: string, keyName: string): number {
  let count = 0
  for (const line of readFileSync(logFile, 'utf8').split('\n')) {
    if (!line.includes('"msg":"request"') || !line.includes('chat/completions')) continue
    const entry = JSON.parse(line) as { msg?: unknown; route?: unknown; keyName?: unknown }
    if (
      entry.msg === 'request' &&
      entry.keyName === keyName &&
      typeof entry.route === 'string' &&
      entry.route.endsWith('/chat/completions')
    )
      count += 1
  }
  return count
}
