import { mkdtempSync, rmSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { stringify } from 'yaml'
import { buildApp, type ProxyApp } from '../../src/app.js'
import { type Config, loadConfig } from '../../src/config.js'
import { buildLogger } from '../../src/logging.js'
import type { KeyFields } from '../../src/team/key-fields.js'
import { openTeamMode, type TeamMode } from '../../src/team/team-mode.js'
import type { RequestTracer } from '../../src/tracing/request-tracer.js'

/** A real proxy on port 0 over a real socket, configured through the same loader as production. */

export interface TestProxy extends ProxyApp {
  readonly url: string
  readonly config: Config
  /** Every log line written so far, as text. */
  readonly logText: () => string
  readonly logLines: () => Array<Record<string, unknown>>
  /** Team mode only (`team.enabled: true` in the config). */
  readonly team: TeamMode | undefined
}

export interface TestTeamProxy extends TestProxy {
  readonly team: TeamMode
  /** Creates a member key on the proxy's store; returns its record and secret. */
  createKey(fields: KeyFields): Promise<{ id: string; secret: string }>
  /** Every usage record written so far (flushes first), oldest first. */
  usageRows(): Promise<Array<Record<string, unknown>>>
  readonly storePath: string
}

/** The upstream key a team-mode test proxy holds. */
export const GATEWAY_KEY = 'sk-gateway-upstream-key-0123456789'

interface Teardown {
  teardown(fn: () => unknown): void
}

export interface TestProxyOptions {
  readonly upstreamUrl: string
  /** YAML sections to merge over the defaults, e.g. `{ retry: { maxAttempts: 1 } }`. */
  readonly config?: Record<string, unknown>
  readonly env?: Record<string, string>
  readonly random?: () => number
  /** Monotonic ms for the app and team mode. */
  readonly now?: () => number
  /** Team mode: how long a usage write waits for a locked store. */
  readonly storeBusyTimeoutMs?: number
  /** Team mode with `team.redisUrl`: the Redis key prefix (a random one per test). */
  readonly redisKeyPrefix?: string
  /** Tracing (tracing/otel-tracer.ts); shut down when the proxy closes. */
  readonly tracer?: RequestTracer
}

export async function startProxy(t: Teardown, options: TestProxyOptions): Promise<TestProxy> {
  // Tests run with millisecond backoff unless they set their own; the policy itself is unit-tested.
  const sections: Record<string, unknown> = { log: { level: 'info' }, ...options.config }
  sections.retry = { baseDelayMs: 2, maxDelayMs: 10, ...(options.config?.retry as object | undefined) }
  const yaml = stringify(sections)
  const config = loadConfig({
    configPath: 'test-config.yaml',
    readFile: () => yaml,
    env: { ...options.env },
    flags: { upstream: options.upstreamUrl, port: '0' },
  })
  const logChunks: string[] = []
  const logDestination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      logChunks.push(chunk.toString())
      callback()
    },
  })
  const logger = buildLogger(config.log.level, logDestination)
  const team = config.team.enabled
    ? await openTeamMode(config, {
        log: logger,
        ...(options.now ? { now: options.now } : {}),
        ...(options.storeBusyTimeoutMs === undefined ? {} : { storeBusyTimeoutMs: options.storeBusyTimeoutMs }),
        ...(options.redisKeyPrefix === undefined ? {} : { redisKeyPrefix: options.redisKeyPrefix }),
      })
    : undefined
  const proxy = buildApp(config, {
    logger,
    ...(team ? { team } : {}),
    ...(options.random ? { random: options.random } : {}),
    ...(options.now ? { now: options.now } : {}),
    ...(options.tracer ? { tracer: options.tracer } : {}),
  })
  await proxy.app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(() => proxy.app.close())
  const { port } = proxy.app.server.address() as AddressInfo
  const logText = () => logChunks.join('')
  return {
    ...proxy,
    url: `http://127.0.0.1:${port}`,
    config,
    team,
    logText,
    logLines: () =>
      logText()
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as Record<string, unknown>),
  }
}

/**
 * A team-mode proxy on a fresh SQLite file of its own (removed after the test), holding
 * GATEWAY_KEY as the upstream key.
 */
export async function startTeamProxy(t: Teardown, options: TestProxyOptions): Promise<TestTeamProxy> {
  const dir = mkdtempSync(join(tmpdir(), 'toprouter-team-'))
  const storePath = join(dir, 'team.db')
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const teamSection = (options.config?.team ?? {}) as Record<string, unknown>
  const proxy = await startProxy(t, {
    ...options,
    env: { TOPROUTER_API_KEY: GATEWAY_KEY, ...options.env },
    config: { ...options.config, team: { storeUrl: `sqlite:${storePath}`, usageFlushMs: 50, ...teamSection, enabled: true } },
  })
  const team = proxy.team as TeamMode
  return {
    ...proxy,
    team,
    storePath,
    async createKey(fields) {
      const { record, secret } = await team.service.keys.createKey(fields)
      return { id: record.id, secret }
    },
    async usageRows() {
      await team.flushUsage()
      return (await team.service.store.usage.listUsage()) as unknown as Array<Record<string, unknown>>
    },
  }
}
