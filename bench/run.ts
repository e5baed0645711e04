import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { snapshotDist, transpileHelper } from './lib/build.js'
import { type BenchOptions, parseCli, UsageError } from './lib/cli.js'
import { type MemoryResult, memoryPhase } from './lib/memory-phase.js'
import { benchPaths } from './lib/paths.js'
import { benchPlan } from './lib/plan.js'
import { clockTicksPerSecond } from './lib/proc-stats.js'
import { createBenchProgress } from './lib/progress.js'
import { summariseLog } from './lib/proxy-log.js'
import { resultsBaseName, writeResults } from './lib/report/files.js'
import { machineInfo } from './lib/report/machine.js'
import { markdown } from './lib/report/markdown.js'
import { problemsOf } from './lib/report/problems.js'
import { redisSummary } from './lib/report/redis.js'
import type { Report } from './lib/report/report.js'
import { teamComparison } from './lib/report/team.js'
import { measureTargets } from './lib/targets.js'

/**
 * The benchmark driver. Starts the fake upstream, then measures each target in turn — started,
 * measured and stopped before the next — so targets never compete with each other for the CPU:
 *
 *   direct  the load generator talks to the upstream itself (the ceiling; CPU is the upstream's)
 *   floor   Fastify 5 + @fastify/http-proxy pass-through, logging off (the framework's cost)
 *   proxy   node dist/main.js, default config, LOG_LEVEL=info to a file, TOPROUTER_API_KEY set
 *   team    the same in team mode: a fresh SQLite store, one gateway key as the clients' Bearer
 *           token, usage recorded (then checked: one row per request answered for the key)
 *   team-redis  team mode with rpm / tpm / concurrency in Redis (its own redis-server), Redis
 *           commands per request counted by phase (more than the limiter sends fails the run)
 *   direct  again, to show how much the machine drifted during the run
 *
 * Then the memory phase if asked for, then the report. Flags: see lib/cli.ts and bench/README.md.
 */
async function main(): Promise<void> {
  const options = optionsOrExit(process.argv.slice(2))
  const plan = benchPlan(options)
  const ticksPerSecond = clockTicksPerSecond()
  const paths = benchPaths(fileURLToPath(new URL('..', import.meta.url)))
  const wallStart = performance.now()

  mkdirSync(paths.results, { recursive: true })
  const dist = snapshotDist(paths)
  const proxy = { main: dist.main, cwd: paths.root }
  const upstreamScript = transpileHelper('upstream', paths)
  const floorScript = transpileHelper('floor', paths)
  const machine: Record<string, string | number> = { ...machineInfo(paths.root), distFingerprint: dist.fingerprint }
  process.stdout.write(
    `toprouter-proxy bench (${options.mode}): node ${process.version}, ${machine.cpus} CPUs, ${ticksPerSecond} ticks/s\n`,
  )

  const progress = createBenchProgress(plan, options.memoryPhase ? options.memory : undefined, options.mode !== 'memory-only')
  const { targets, upstream } =
    options.mode === 'memory-only'
      ? { targets: [], upstream: { completionBytes: 0, modelsBytes: 0 } }
      : await measureTargets({
          plan,
          upstreamScript,
          floorScript,
          proxy,
          cwd: paths.root,
          resultsDir: paths.results,
          ticksPerSecond,
          progress,
        })

  let memory: MemoryResult | undefined
  if (options.memoryPhase) {
    process.stdout.write(`memory phase: ${options.memory.streams} streams held ${options.memory.holdS} s — ${progress.memoryStarts()}\n`)
    const logFile = join(paths.results, 'proxy-memory.log')
    const measured = await memoryPhase({ options: options.memory, upstreamScript, proxy, cwd: paths.root, logFile })
    memory = { ...measured, log: summariseLog(logFile) }
  }

  const teamVsLocal = teamComparison(targets, 'team')
  const teamRedisVsLocal = teamComparison(targets, 'team-redis')
  const redisCommands = redisSummary(targets)
  const report: Report = {
    timestamp: new Date().toISOString(),
    mode: options.mode,
    machine,
    plan: { ...plan.phases, connections: plan.connections, clockTicksPerSecond: ticksPerSecond },
    upstream,
    targets,
    ...(teamVsLocal === undefined ? {} : { teamVsLocal }),
    ...(teamRedisVsLocal === undefined ? {} : { teamRedisVsLocal }),
    ...(redisCommands === undefined ? {} : { redisCommands }),
    ...(memory === undefined ? {} : { memory }),
    problems: problemsOf(targets, memory),
    wallSeconds: (performance.now() - wallStart) / 1000,
  }
  const text = markdown(report)
  process.stdout.write(`\n${text}\n`)
  const base = resultsBaseName(options.mode)
  writeResults(paths.results, base, report, text)
  process.stdout.write(`written to ${join('bench', 'results', base)}.{md,json}\n`)
  if (report.problems.length > 0) {
    process.stderr.write(`bench: ${report.problems.length} problem(s):\n${report.problems.map((p) => `  - ${p}`).join('\n')}\n`)
    process.exitCode = 1
  }
}

function optionsOrExit(args: string[]): BenchOptions {
  try {
    return parseCli(args, process.env)
  } catch (err: unknown) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`bench: ${err.message}\n`)
    process.exit(2)
  }
}

await main()
