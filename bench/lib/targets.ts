import { randomBytes } from 'node:crypto'
import { rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import type { CpuWatch } from './load/phase.js'
import { measureTargetPhases, type TargetPhases } from './load/target-phases.js'
import type { BenchPlan, TargetName } from './plan.js'
import { statusKb } from './proc-stats.js'
import { type BenchProcess, type ProxyCommand, startHelper, startProxy, stop } from './processes.js'
import type { BenchProgress } from './progress.js'
import { type LogSummary, summariseLog } from './proxy-log.js'
import { createRedisCommandCounter, limiterKey, type RedisCommandCounter, scriptCommandsOf } from './redis-commands.js'
import { startRedisServer } from './redis-server.js'
import { API_KEY, CHAT_BODY, CHAT_PATH, clientHeaders, MODELS_PATH, REQUEST_HEADERS } from './requests.js'
import { checkUsage, createTeamStore, type TeamRedisOptions, teamDirectory, type UsageCheck } from './team-target.js'

export interface TargetResult {
  readonly target: TargetName
  /** `direct (end)` for the second direct run. */
  readonly label: string
  readonly phases: TargetPhases
  readonly peakRssMb: number
  readonly rssAtEndMb: number
  readonly log?: LogSummary
  /** The team targets only: their store's usage rows against the requests the proxy answered for the key. */
  readonly usage?: UsageCheck
  /** The team targets only, when `usage.ok` is false: the store kept for a look (else it is removed). */
  readonly keptStore?: string
  /** team-redis only: its redis-server (the per-phase command counts are on the phases, as `redis`). */
  readonly redisServer?: RedisServerInfo
}

export interface RedisServerInfo {
  readonly version: string
  /** The run's own `team.redisKeyPrefix`. */
  readonly keyPrefix: string
  /** `KEYS <prefix>*` after the phases: the limiter's counters whose window is still open. */
  readonly keysAfter: string[]
  /** The commands the proxy's Lua scripts run (counted as "inside the scripts", not as sent). */
  readonly scriptCommands: string[]
}

/** The sizes of the upstream's two bodies, for the report. */
export interface UpstreamSizes {
  readonly completionBytes: number
  readonly modelsBytes: number
}

export interface TargetsSetup {
  readonly plan: BenchPlan
  readonly upstreamScript: string
  readonly floorScript: string
  readonly proxy: ProxyCommand
  /** Working directory of the helpers. */
  readonly cwd: string
  /** Where the proxy's log of the run (proxy.log) goes. */
  readonly resultsDir: string
  readonly ticksPerSecond: number
  /** The run's time left, printed as each target and phase starts. */
  readonly progress: BenchProgress
}

/**
 * Starts the upstream once, then measures each target of the plan in turn — started, measured and
 * stopped before the next — so targets never compete with each other for the CPU.
 */
export async function measureTargets(setup: TargetsSetup): Promise<{ targets: TargetResult[]; upstream: UpstreamSizes }> {
  const upstream = await startHelper({ name: 'upstream', script: setup.upstreamScript, args: ['--port', '0'], cwd: setup.cwd })
  const sizes = await upstreamSizes(upstream.url)
  process.stdout.write(`upstream on ${upstream.url} (pid ${upstream.pid})\n`)
  const targets: TargetResult[] = []
  try {
    let directRuns = 0
    const count = setup.plan.targets.length
    for (const [index, target] of setup.plan.targets.entries()) {
      const label = target === 'direct' ? (directRuns++ === 0 ? 'direct' : 'direct (end)') : target
      process.stdout.write(`${label}: target ${index + 1} of ${count} — ${setup.progress.targetStarts()}\n`)
      targets.push(await measureTarget(target, label, upstream, setup))
    }
  } finally {
    await stop(upstream)
  }
  return { targets, upstream: sizes }
}

async function measureTarget(target: TargetName, label: string, upstream: BenchProcess, setup: TargetsSetup): Promise<TargetResult> {
  if (target === 'team' || target === 'team-redis') return measureTeamTarget(target, label, upstream, setup)
  let proc: BenchProcess | undefined
  let logFile: string | undefined
  if (target === 'floor')
    proc = await startHelper({
      name: 'floor',
      script: setup.floorScript,
      args: ['--port', '0', '--upstream', upstream.url],
      cwd: setup.cwd,
    })
  if (target === 'proxy') {
    logFile = join(setup.resultsDir, 'proxy.log')
    proc = await startProxy(setup.proxy, upstream.url, logFile)
  }
  if (target === 'continuation') {
    logFile = join(setup.resultsDir, 'proxy-continuation.log')
    const configPath = join(setup.resultsDir, '.build', 'continuation.yaml')
    writeFileSync(configPath, 'streams:\n  continuation:\n    enabled: true\n')
    proc = await startProxy(setup.proxy, upstream.url, logFile, configPath)
  }
  let result: TargetResult
  try {
    // Local-mode clients send sk-bench (the proxy replaces it with its own key).
    result = await measureRunning(target, label, proc, upstream, setup, API_KEY)
  } finally {
    if (proc !== undefined) await stop(proc)
  }
  // Read once the proxy has exited, so the log is complete.
  return logFile === undefined ? result : { ...result, log: summariseLog(logFile) }
}

/**
 * `team` and `team-redis`: a fresh store (and for team-redis its own redis-server, started first),
 * the key made with the CLI, the proxy in team mode; after it has exited (its drain writes the last
 * usage batch) the usage check. The store is kept for a look when the check fails.
 */
async function measureTeamTarget(
  target: 'team' | 'team-redis',
  label: string,
  upstream: BenchProcess,
  setup: TargetsSetup,
): Promise<TargetResult> {
  const dir = teamDirectory()
  let redisServer: BenchProcess | undefined
  let proc: BenchProcess | undefined
  let counter: RedisCommandCounter | undefined
  let keepStore = false
  try {
    let redis: TeamRedisOptions | undefined
    if (target === 'team-redis') {
      redisServer = await startRedisServer(dir)
      redis = { url: redisServer.url, keyPrefix: `bench-${process.pid}-${randomBytes(4).toString('hex')}:` }
    }
    const team = createTeamStore(setup.proxy, dir, redis)
    const where = redisServer === undefined ? '' : `; redis-server ${redisServer.url} (pid ${redisServer.pid}), prefix ${redis?.keyPrefix}`
    process.stdout.write(`  [${label}] store ${team.storePath}, key ${team.keyPrefix}… (created with keys create)${where}\n`)
    const logFile = join(setup.resultsDir, `proxy-${target}.log`)
    proc = await startProxy(setup.proxy, upstream.url, logFile, team.configPath)
    let redisWatch: CpuWatch['redis']
    const scriptCommands = scriptCommandsOf(join(dirname(setup.proxy.main), 'team'))
    if (redisServer !== undefined && redis !== undefined) {
      counter = await createRedisCommandCounter({
        redisUrl: redisServer.url,
        proxyUrl: proc.url,
        keyPrefix: redis.keyPrefix,
        slotsKey: limiterKey(redis.keyPrefix, team.keyId, 'slots'),
        scriptCommands,
      })
      redisWatch = { pid: redisServer.pid, counter }
    }
    const result = await measureRunning(target, label, proc, upstream, setup, team.secret, redisWatch)
    let redisServerInfo: RedisServerInfo | undefined
    if (counter !== undefined && redis !== undefined) {
      redisServerInfo = {
        version: await counter.version(),
        keyPrefix: redis.keyPrefix,
        keysAfter: (await counter.keys()).sort(),
        scriptCommands: [...scriptCommands].sort(),
      }
    }
    await stop(proc)
    proc = undefined
    const log = summariseLog(logFile)
    const usage = checkUsage(team, logFile, measuredChatResponses(result.phases))
    process.stdout.write(
      `  [${label}] usage rows ${usage.usageRows} vs requests answered for the key ${usage.answeredRequests}: ${usage.ok ? 'ok' : 'MISMATCH'}\n`,
    )
    keepStore = !usage.ok
    return {
      ...result,
      log,
      usage,
      ...(usage.ok ? {} : { keptStore: team.storePath }),
      ...(redisServerInfo === undefined ? {} : { redisServer: redisServerInfo }),
    }
  } finally {
    counter?.close()
    if (proc !== undefined) await stop(proc)
    if (redisServer !== undefined) await stop(redisServer)
    if (!keepStore) rmSync(dir, { recursive: true, force: true })
  }
}

/** The phases against a started target (`proc`; undefined for direct, whose figures are the upstream's). */
async function measureRunning(
  target: TargetName,
  label: string,
  proc: BenchProcess | undefined,
  upstream: BenchProcess,
  setup: TargetsSetup,
  apiKey: string,
  redis?: CpuWatch['redis'],
): Promise<TargetResult> {
  // For direct, the load goes to the upstream and its CPU and memory are the figures.
  const measuredPid = proc?.pid ?? upstream.pid
  const watch: CpuWatch = {
    targetPid: measuredPid,
    upstreamPid: upstream.pid,
    ticksPerSecond: setup.ticksPerSecond,
    ...(redis === undefined ? {} : { redis }),
  }
  const phases = await measureTargetPhases(label, proc?.url ?? upstream.url, watch, setup.plan, clientHeaders(apiKey), setup.progress)
  return {
    target,
    label,
    phases,
    peakRssMb: statusKb(measuredPid, 'VmHWM') / 1024,
    rssAtEndMb: statusKb(measuredPid, 'VmRSS') / 1024,
  }
}

/** The chat responses the load generator counted in the measured phases (not the warm-ups). */
function measuredChatResponses(phases: TargetPhases): number {
  const { throughput, paced, stream, unloaded } = phases
  return (
    (throughput?.requests ?? 0) +
    (paced?.requests ?? 0) +
    (stream?.requests ?? 0) +
    (unloaded?.requests ?? 0) +
    (unloaded?.extra.streams ?? 0)
  )
}

async function upstreamSizes(upstreamUrl: string): Promise<UpstreamSizes> {
  const models = await fetch(`${upstreamUrl}${MODELS_PATH}`).then((r) => r.arrayBuffer())
  const chat = await fetch(`${upstreamUrl}${CHAT_PATH}`, { method: 'POST', headers: REQUEST_HEADERS, body: CHAT_BODY }).then((r) =>
    r.arrayBuffer(),
  )
  return { completionBytes: chat.byteLength, modelsBytes: models.byteLength }
}
