import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import BetterSqlite3 from 'better-sqlite3'
import { snapshotDist, transpileHelper } from './lib/build.js'
import { benchPaths } from './lib/paths.js'
import { socketCount, statusKb } from './lib/proc-stats.js'
import { type BenchProcess, type ProxyCommand, startHelper, startProxy, stop } from './lib/processes.js'
import { API_KEY, clientHeaders } from './lib/requests.js'
import { checkSlope, type SeriesName } from './lib/soak/checks.js'
import {
  type ModeResult,
  markdown,
  SAMPLE_HEADER,
  type Sample,
  type SoakReport,
  sampleRow,
  svgOf,
  terminalChart,
} from './lib/soak/report.js'
import { emptyCounts, runTraffic, type TrafficCounts, type TrafficOptions } from './lib/soak/traffic.js'
import { checkUsage, createTeamStore, teamDirectory } from './lib/team-target.js'

/**
 * The endurance run (`npm run soak`; not in CI, which runs test/soak.test.ts's 30-second version):
 * mixed traffic through the proxy against the bench upstream for `--duration-s` per mode — streams
 * ramped to `--peak-streams` open and held there, non-streaming requests, 30 % of clients leaving at
 * a random point, a share of upstream faults — sampling the proxy every `--sample-s`: RSS and sockets
 * from /proc, heap, handles and event-loop delay from a probe preloaded into it (soak-probe.ts). Fails
 * (exit 1) if a series grows over the second half (lib/soak/checks.ts), a team-mode request has no
 * usage row, the proxy crashed, a request hung, or the upstream is still writing streams after the
 * load. See bench/README.md (Soak).
 */

const { values } = parseArgs({
  options: {
    'duration-s': { type: 'string', default: '600' },
    mode: { type: 'string', default: 'both' },
    'sample-s': { type: 'string', default: '30' },
    'peak-streams': { type: 'string', default: '1000' },
    'non-streaming-per-s': { type: 'string', default: '50' },
    'disconnect-share': { type: 'string', default: '0.3' },
    'fault-share': { type: 'string', default: '0.1' },
    'out-dir': { type: 'string' },
    name: { type: 'string', default: 'soak' },
  },
  strict: true,
})

function numberFlag(name: keyof typeof values, min: number, max: number): number {
  const value = Number(values[name])
  if (!Number.isFinite(value) || value < min || value > max) {
    process.stderr.write(`--${name} must be a number from ${min} to ${max}, not ${String(values[name])}\n`)
    process.exit(2)
  }
  return value
}

const durationS = numberFlag('duration-s', 5, 24 * 3600)
const sampleS = numberFlag('sample-s', 1, 600)
const peakStreams = numberFlag('peak-streams', 0, 20_000)
const nonStreamingPerS = numberFlag('non-streaming-per-s', 0, 5000)
const disconnectShare = numberFlag('disconnect-share', 0, 1)
const faultShare = numberFlag('fault-share', 0, 1)
if (values.mode !== 'local' && values.mode !== 'team' && values.mode !== 'both') {
  process.stderr.write(`--mode must be local, team or both, not ${values.mode}\n`)
  process.exit(2)
}
if (!/^[\w.-]+$/.test(values.name)) {
  process.stderr.write('--name must be a plain file name\n')
  process.exit(2)
}
const modes: ('local' | 'team')[] = values.mode === 'both' ? ['local', 'team'] : [values.mode]

const paths = benchPaths(fileURLToPath(new URL('..', import.meta.url)))
const outDir = resolve(values['out-dir'] ?? paths.results)
/** Short runs (the CI one) get short streams, so the drain at the end stays short too. */
const short = durationS < 120
const traffic = {
  durationS,
  rampS: Math.min(60, durationS * 0.2),
  peakStreams,
  nonStreamingPerS,
  disconnectShare,
  faultShare,
  streamChunks: short ? ([5, 20] as const) : ([10, 60] as const),
  chunkDelayMs: short ? ([50, 200] as const) : ([100, 400] as const),
  requestTimeoutMs: 120_000,
}
/** After the load has drained: how long before the "after" reading. */
const settleS = short ? 3 : 10

const mb = (bytes: number) => bytes / 1024 / 1024

/** The upstream and proxy running now: killed if the soak itself is stopped (Ctrl-C, a test's timeout). */
const live = new Set<BenchProcess>()
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    for (const proc of live) proc.child.kill('SIGKILL')
    process.stderr.write(`soak: ${signal}, stopped its upstream and proxy\n`)
    process.exit(1)
  })
}

interface ProbeLine {
  t: number
  rss: number
  heapUsed: number
  heapUsedMin: number
  heapLive: number
  heapTotal: number
  external: number
  handles: number
  eldP99: number
  eldMax: number
}

function probeLines(file: string): ProbeLine[] {
  if (!existsSync(file)) return []
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as ProbeLine)
}

async function upstreamStats(url: string): Promise<{ activeStreams: number; connections: number; faults: ModeResult['faultsInjected'] }> {
  const response = await fetch(`${url}/_bench/stats`)
  return (await response.json()) as { activeStreams: number; connections: number; faults: ModeResult['faultsInjected'] }
}

function logSummary(file: string): ModeResult['log'] {
  const lines = readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line !== '')
  const log = { lines: lines.length, warn: 0, error: 0, fatal: 0, sample: [] as string[] }
  for (const line of lines) {
    const level = Number(/"level":(\d+)/.exec(line)?.[1] ?? 30)
    if (level >= 60) log.fatal += 1
    else if (level >= 50) log.error += 1
    else if (level >= 40) log.warn += 1
    if (level >= 50 && log.sample.length < 5) log.sample.push(line.slice(0, 500))
  }
  return log
}

/** The proxy's `request` log lines for the chat route, whatever the key (a client that left mid-body has none). */
function chatRequestLines(file: string): number {
  let count = 0
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.includes('"msg":"request"')) continue
    const entry = JSON.parse(line) as { msg?: unknown; route?: unknown }
    if (entry.msg === 'request' && typeof entry.route === 'string' && entry.route.endsWith('/chat/completions')) count += 1
  }
  return count
}

function rowsByEnding(storePath: string, keyId: string): Record<string, number> {
  const db = new BetterSqlite3(storePath, { readonly: true, fileMustExist: true })
  try {
    const rows = db
      .prepare('SELECT ending, status, COUNT(*) AS n FROM usage WHERE key_id = ? GROUP BY ending, status ORDER BY n DESC')
      .all(keyId) as { ending: string; status: number; n: number }[]
    return Object.fromEntries(rows.map((r) => [`${r.ending} ${r.status}`, r.n]))
  } finally {
    db.close()
  }
}

async function runMode(
  mode: 'local' | 'team',
  upstreamScript: string,
  probeScript: string,
  proxyCommand: ProxyCommand,
): Promise<ModeResult> {
  process.stdout.write(`\n== ${mode} mode: ${durationS} s, ${peakStreams} streams at peak, sampled every ${sampleS} s ==\n`)
  const work = mkdtempSync(join(tmpdir(), `toprouter-soak-${mode}-`))
  const probeFile = join(work, 'probe.jsonl')
  const logFile = join(outDir, `proxy-${values.name}-${mode}.log`)
  const upstream = await startHelper({ name: 'upstream', script: upstreamScript, args: ['--port', '0'], cwd: paths.root })
  live.add(upstream)
  const store = mode === 'team' ? createTeamStore(proxyCommand, teamDirectory()) : undefined
  let proxy: BenchProcess | undefined
  const problems: string[] = []
  try {
    proxy = await startProxy(proxyCommand, upstream.url, logFile, store?.configPath, {
      nodeArgs: ['--import', pathToFileURL(probeScript).href],
      env: { SOAK_PROBE_FILE: probeFile, SOAK_PROBE_INTERVAL_MS: String(sampleS * 1000) },
    })
    const running = proxy
    live.add(running)
    let crashed = false
    running.child.once('exit', () => {
      crashed = true
    })
    await sleep(300)
    const before = { rssMb: statusKb(running.pid, 'VmRSS') / 1024, sockets: socketCount(running.pid) }
    const counts: TrafficCounts = emptyCounts()
    const options: TrafficOptions = { ...traffic, url: running.url, headers: clientHeaders(store?.secret ?? API_KEY).chat }
    const loadStart = performance.now()
    let loadOver = false
    const load = runTraffic(options, counts).finally(() => {
      loadOver = true
    })
    const samples: Sample[] = []
    let seen = probeLines(probeFile).length
    process.stdout.write(`${SAMPLE_HEADER.join('\n')}\n`)
    while (!loadOver && !crashed) {
      await sleep(200)
      const lines = probeLines(probeFile)
      if (lines.length <= seen) continue
      seen = lines.length
      const line = lines.at(-1) as ProbeLine
      let rssMb: number
      let sockets: number
      try {
        rssMb = statusKb(running.pid, 'VmRSS') / 1024
        sockets = socketCount(running.pid)
      } catch {
        break // the proxy is gone
      }
      const sample: Sample = {
        t: Math.round((performance.now() - loadStart) / 100) / 10,
        rssMb,
        heapUsedMb: mb(line.heapUsed),
        heapUsedLowMb: mb(line.heapUsedMin),
        heapLiveMb: mb(line.heapLive),
        heapTotalMb: mb(line.heapTotal),
        externalMb: mb(line.external),
        handles: line.handles,
        sockets,
        eldP99Ms: line.eldP99,
        eldMaxMs: line.eldMax,
        openStreams: counts.openStreams,
        started: counts.started,
      }
      samples.push(sample)
      process.stdout.write(`${sampleRow(sample)}\n${terminalChart(samples)}`)
    }
    await load
    const loadEnded = performance.now()
    if (crashed) problems.push('the proxy exited during the load')
    // The "after" reading: the first probe line written at least settleS after the load ended (at most one window later).
    let after: ModeResult['after'] | undefined
    await sleep(settleS * 1000)
    seen = probeLines(probeFile).length
    const afterDeadline = performance.now() + (sampleS + 5) * 1000
    while (!crashed && performance.now() < afterDeadline) {
      await sleep(200)
      const lines = probeLines(probeFile)
      if (lines.length <= seen) continue
      const line = lines.at(-1) as ProbeLine
      const stats = await upstreamStats(upstream.url)
      after = {
        rssMb: statusKb(running.pid, 'VmRSS') / 1024,
        sockets: socketCount(running.pid),
        handles: line.handles,
        heapUsedMb: mb(line.heapUsed),
        heapLiveMb: mb(line.heapLive),
        upstreamActiveStreams: stats.activeStreams,
        upstreamConnections: stats.connections,
        secondsAfterLoad: Math.round((performance.now() - loadEnded) / 1000),
      }
      break
    }
    const peakRssMb = crashed ? Number.NaN : statusKb(running.pid, 'VmHWM') / 1024
    const faultsInjected = (await upstreamStats(upstream.url)).faults
    const crashedBeforeStop = crashed
    await stop(running)
    const proxyExit = { code: running.child.exitCode, signal: running.child.signalCode, crashed: crashedBeforeStop }
    if (after === undefined) {
      problems.push('no reading after the load (the probe wrote no line)')
      after = {
        rssMb: Number.NaN,
        sockets: Number.NaN,
        handles: Number.NaN,
        heapUsedMb: Number.NaN,
        heapLiveMb: Number.NaN,
        upstreamActiveStreams: Number.NaN,
        upstreamConnections: Number.NaN,
        secondsAfterLoad: Number.NaN,
      }
    } else if (after.upstreamActiveStreams !== 0) {
      problems.push(`${after.upstreamActiveStreams} upstream streams still being written ${after.secondsAfterLoad} s after the load`)
    }
    if (running.child.exitCode !== 0) problems.push(`the proxy exited with code ${String(running.child.exitCode)} on SIGTERM`)

    const series: [SeriesName, (s: Sample) => number][] = [
      ['rssMb', (s) => s.rssMb],
      ['heapUsedMb', (s) => s.heapLiveMb],
      ['handles', (s) => s.handles],
      ['sockets', (s) => s.sockets],
      ['eldP99Ms', (s) => s.eldP99Ms],
    ]
    const slopes = series.map(([name, get]) =>
      checkSlope(
        name,
        samples.map((s) => ({ t: s.t, value: get(s) })),
        durationS,
      ),
    )
    for (const s of slopes) {
      if (!s.ok)
        problems.push(
          `${s.label} grows ${s.slopePerMin.toFixed(2)} ${s.unit}/min over the second half (${s.points} points), above the bound ${s.boundPerMin.toFixed(2)}`,
        )
    }
    if (counts.hung > 0) problems.push(`${counts.hung} requests hung (not over after ${traffic.requestTimeoutMs / 1000} s)`)
    const accounted =
      counts.ok.stream +
      counts.ok.nonStreaming +
      Object.values(counts.statuses).reduce((a, b) => a + b, 0) +
      counts.truncatedStreams +
      counts.connectionErrors +
      counts.aborted.midBody +
      counts.aborted.beforeHeaders +
      counts.aborted.afterHeaders +
      counts.hung
    if (accounted !== counts.started) problems.push(`${counts.started} requests sent but ${accounted} counted by how they ended`)
    if (counts.peakOpenStreams < peakStreams) problems.push(`only ${counts.peakOpenStreams} streams open at once, not ${peakStreams}`)
    const log = logSummary(logFile)
    const loggedRequests = chatRequestLines(logFile)
    if (loggedRequests !== counts.started)
      problems.push(`clients sent ${counts.started} requests but the proxy logged ${loggedRequests} (its request log lines, chat route)`)
    if (log.fatal > 0) problems.push(`the proxy logged ${log.fatal} fatal lines: ${log.sample[0] ?? ''}`)

    let usage: ModeResult['usage']
    if (store !== undefined) {
      // After the proxy has exited: its drain flushed the usage writer.
      const check = checkUsage(store, logFile, counts.bodySent)
      const ok = check.usageRows === check.answeredRequests && check.usageRows >= counts.bodySent && check.usageRows <= counts.started
      usage = {
        usageRows: check.usageRows,
        loggedRequests: check.answeredRequests,
        clientStarted: counts.started,
        clientBodySent: counts.bodySent,
        rowsByEnding: rowsByEnding(store.storePath, store.keyId),
        ok,
      }
      if (!ok)
        problems.push(
          `usage rows ${check.usageRows}, but the proxy logged ${check.answeredRequests} requests for the key and clients sent ${counts.bodySent} whole bodies (${counts.started} started)`,
        )
    }
    const result: ModeResult = {
      mode,
      durationS,
      sampleS,
      peakStreams,
      nonStreamingPerS,
      before,
      samples,
      after,
      peakRssMb,
      counts,
      faultsInjected,
      slopes,
      ...(usage === undefined ? {} : { usage }),
      log,
      loggedRequests,
      proxyExit,
      problems,
    }
    process.stdout.write(
      `${mode}: ${counts.started} requests (${counts.byKind.stream} streams), ${counts.aborted.midBody + counts.aborted.beforeHeaders + counts.aborted.afterHeaders} clients left, ` +
        `faults injected ${JSON.stringify(faultsInjected)}${usage === undefined ? '' : `, usage rows ${usage.usageRows} / logged ${usage.loggedRequests} / bodies sent ${usage.clientBodySent}`}` +
        ` — ${problems.length === 0 ? 'passed' : `FAILED:\n  ${problems.join('\n  ')}`}\n`,
    )
    return result
  } finally {
    if (proxy !== undefined) await stop(proxy)
    await stop(upstream)
    live.clear()
    if (store !== undefined) rmSync(store.dir, { recursive: true, force: true })
    rmSync(work, { recursive: true, force: true })
  }
}

async function main(): Promise<void> {
  mkdirSync(outDir, { recursive: true })
  const dist = snapshotDist(paths)
  const proxyCommand = { main: dist.main, cwd: paths.root }
  const upstreamScript = transpileHelper('upstream', paths)
  const probeScript = transpileHelper('soak-probe', paths)
  // Read before the run: the commit whose code is being measured, not whatever HEAD is when it ends.
  let commit = 'unknown'
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: paths.root, encoding: 'utf8' }).trim()
  } catch {
    // not a checkout
  }
  const results: ModeResult[] = []
  for (const mode of modes) results.push(await runMode(mode, upstreamScript, probeScript, proxyCommand))
  const report: SoakReport = {
    when: new Date().toISOString(),
    commit,
    node: process.version,
    cpus: cpus().length,
    options: { ...traffic, sampleS, settleS, modes },
    modes: results,
    ok: results.every((r) => r.problems.length === 0),
  }
  const base = join(outDir, values.name)
  writeFileSync(`${base}.json`, `${JSON.stringify(report, null, 2)}\n`)
  writeFileSync(`${base}.md`, markdown(report))
  for (const result of results) writeFileSync(`${base}-${result.mode}.svg`, await svgOf(result))
  process.stdout.write(
    `\nwrote ${base}.md, ${base}.json and ${results.map((r) => `${base}-${r.mode}.svg`).join(', ')}\n` +
      `soak ${report.ok ? 'passed' : 'FAILED'}\n`,
  )
  process.exitCode = report.ok ? 0 : 1
}

main().catch((err: unknown) => {
  process.stderr.write(`soak failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
  process.exitCode = 1
})
