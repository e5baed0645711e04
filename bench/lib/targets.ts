import { join } from 'node:path'
import { measureTargetPhases, type TargetPhases } from './load/target-phases.js'
import type { BenchPlan, TargetName } from './plan.js'
import { statusKb } from './proc-stats.js'
import { type BenchProcess, type ProxyCommand, startHelper, startProxy, stop } from './processes.js'
import { type LogSummary, summariseLog } from './proxy-log.js'
import { API_KEY, CHAT_BODY, CHAT_PATH, clientHeaders, MODELS_PATH, REQUEST_HEADERS } from './requests.js'
import { checkUsage, createTeamStore, removeTeamStore, type TeamStore, type UsageCheck } from './team-target.js'

export interface TargetResult {
  readonly target: TargetName
  /** `direct (end)` for the second direct run. */
  readonly label: string
  readonly phases: TargetPhases
  readonly peakRssMb: number
  readonly rssAtEndMb: number
  readonly log?: LogSummary
  /** The team target only: its store's usage rows against the requests the proxy answered for the key. */
  readonly usage?: UsageCheck
  /** The team target only, when `usage.ok` is false: the store kept for a look (else it is removed). */
  readonly keptStore?: string
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
    for (const target of setup.plan.targets) {
      const label = target === 'direct' ? (directRuns++ === 0 ? 'direct' : 'direct (end)') : target
      process.stdout.write(`${label}:\n`)
      targets.push(await measureTarget(target, label, upstream, setup))
    }
  } finally {
    await stop(upstream)
  }
  return { targets, upstream: sizes }
}

async function measureTarget(target: TargetName, label: string, upstream: BenchProcess, setup: TargetsSetup): Promise<TargetResult> {
  let proc: BenchProcess | undefined
  let logFile: string | undefined
  let team: TeamStore | undefined
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
  if (target === 'team') {
    team = createTeamStore(setup.proxy)
    process.stdout.write(`  [${label}] store ${team.storePath}, key ${team.keyPrefix}… (created with keys create)\n`)
    logFile = join(setup.resultsDir, 'proxy-team.log')
    try {
      proc = await startProxy(setup.proxy, upstream.url, logFile, team.configPath)
    } catch (err: unknown) {
      removeTeamStore(team)
      throw err
    }
  }
  // Local-mode clients send sk-bench (the proxy replaces it); team members send their gateway key.
  const headers = clientHeaders(team?.secret ?? API_KEY)
  // For direct, the load goes to the upstream and its CPU and memory are the figures.
  const measuredPid = proc?.pid ?? upstream.pid
  let result: TargetResult
  try {
    const watch = { targetPid: measuredPid, upstreamPid: upstream.pid, ticksPerSecond: setup.ticksPerSecond }
    const phases = await measureTargetPhases(label, proc?.url ?? upstream.url, watch, setup.plan, headers)
    result = {
      target,
      label,
      phases,
      peakRssMb: statusKb(measuredPid, 'VmHWM') / 1024,
      rssAtEndMb: statusKb(measuredPid, 'VmRSS') / 1024,
    }
  } catch (err: unknown) {
    if (proc !== undefined) await stop(proc)
    if (team !== undefined) removeTeamStore(team)
    throw err
  }
  if (proc !== undefined) await stop(proc)
  // Read once the proxy has exited, so the log is complete (and, in team mode, the drain has
  // written every usage record).
  if (logFile !== undefined) result = { ...result, log: summariseLog(logFile) }
  if (team === undefined || logFile === undefined) return result
  const usage = checkUsage(team, logFile, measuredChatResponses(result.phases))
  process.stdout.write(
    `  [${label}] usage rows ${usage.usageRows} vs requests answered for the key ${usage.answeredRequests}: ${usage.ok ? 'ok' : 'MISMATCH'}\n`,
  )
  if (usage.ok) removeTeamStore(team)
  return { ...result, usage, ...(usage.ok ? {} : { keptStore: team.storePath }) }
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
