import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { closeSync, copyFileSync, cpSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import ts from 'typescript'
import { Client, Pool } from 'undici'

/**
 * The benchmark driver. Starts the fake upstream, then measures each target in turn — started,
 * measured and stopped before the next — so targets never compete with each other for the CPU:
 *
 *   direct  the load generator talks to the upstream itself (the ceiling; CPU is the upstream's)
 *   floor   Fastify 5 + @fastify/http-proxy pass-through, logging off (the framework's cost)
 *   proxy   node dist/main.js, default config, LOG_LEVEL=info to a file, TOPROUTER_API_KEY set
 *   direct  again, to show how much the machine drifted during the run
 *
 * Flags: --duration-s N (10), --warmup-s N (3), --smoke, --memory, --memory-only,
 * --memory-config PATH (a proxy config file for the memory phase). See bench/README.md.
 */

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const BENCH = join(ROOT, 'bench')
const RESULTS = join(BENCH, 'results')
const BUILD = join(RESULTS, '.build')

const { values: flags } = parseArgs({
  options: {
    'duration-s': { type: 'string', default: '10' },
    'warmup-s': { type: 'string', default: '3' },
    smoke: { type: 'boolean', default: false },
    memory: { type: 'boolean', default: false },
    'memory-only': { type: 'boolean', default: false },
    'memory-config': { type: 'string' },
    'memory-streams': { type: 'string', default: '1000' },
    'memory-hold-s': { type: 'string', default: '30' },
  },
  strict: true,
})

function positive(name: string, text: string, allowZero = false): number {
  const value = Number(text)
  if (!Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    process.stderr.write(`bench: --${name} must be a ${allowZero ? 'non-negative' : 'positive'} number, found "${text}"\n`)
    process.exit(2)
  }
  return value
}

const SMOKE = flags.smoke
const DURATION_S = positive('duration-s', flags['duration-s'])
const WARMUP_S = positive('warmup-s', flags['warmup-s'], true)
const MEMORY_STREAMS = positive('memory-streams', flags['memory-streams'])
const MEMORY_HOLD_S = positive('memory-hold-s', flags['memory-hold-s'])

/** How long each phase runs; the smoke shrinks everything to a couple of seconds in total. */
const PLAN = SMOKE
  ? { warmupS: 0.2, throughputS: 0.3, pacedS: 0.3, pacedRate: 1000, streamS: 0.3, unloadedN: 40, unloadedStreamsN: 15, modelsS: 0.2 }
  : {
      warmupS: WARMUP_S,
      throughputS: DURATION_S,
      pacedS: DURATION_S,
      pacedRate: 1000,
      streamS: DURATION_S,
      unloadedN: 2000,
      unloadedStreamsN: 1000,
      modelsS: DURATION_S / 2,
    }

const CONNECTIONS = { throughput: 64, pacedMaxInFlight: 64, stream: 32, models: 32 }
const API_KEY = 'sk-bench'
const CHAT_PATH = '/chat/completions'
const MODELS_PATH = '/models'
const MESSAGES = [
  { role: 'system', content: 'You are a concise assistant.' },
  { role: 'user', content: 'Say hello in one short sentence, please.' },
]
const CHAT_BODY = JSON.stringify({ model: 'google/gemini-3.5-flash', messages: MESSAGES, max_tokens: 64 })
const STREAM_BODY = JSON.stringify({ model: 'google/gemini-3.5-flash', messages: MESSAGES, max_tokens: 64, stream: true })
const REQUEST_HEADERS = { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}`, accept: 'application/json' }
const GET_HEADERS = { authorization: `Bearer ${API_KEY}`, accept: 'application/json' }

const CLK_TCK = (() => {
  try {
    const value = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())
    return Number.isFinite(value) && value > 0 ? value : 100
  } catch {
    return 100
  }
})()

// ---- /proc ------------------------------------------------------------------------------------

/** utime + stime of a process (all its threads), in seconds. Fields 14 and 15 of /proc/<pid>/stat. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // The command name (field 2) may contain spaces; everything after its closing ')' is fixed.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // fields[0] is field 3 (state), so field 14 is fields[11] and field 15 is fields[12].
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK
}

function statusKb(pid: number, key: 'VmHWM' | 'VmRSS'): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const match = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)
  return match?.[1] === undefined ? Number.NaN : Number(match[1])
}

function socketCount(pid: number): number {
  let count = 0
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) count += 1
    } catch {
      // closed between readdir and readlink
    }
  }
  return count
}

// ---- processes --------------------------------------------------------------------------------

interface Proc {
  readonly name: string
  readonly child: ChildProcess
  readonly pid: number
  readonly url: string
  readonly stderr: () => string
}

/**
 * upstream.ts and floor.ts are transpiled once to plain JS, so that they run on bare `node` like
 * dist/main.js does: no tsx loader thread or esbuild service skewing their CPU and RSS figures.
 */
function transpile(name: string): string {
  mkdirSync(BUILD, { recursive: true })
  const source = readFileSync(join(BENCH, `${name}.ts`), 'utf8')
  const output = ts.transpileModule(source, {
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, sourceMap: false },
    fileName: `${name}.ts`,
  })
  const file = join(BUILD, `${name}.mjs`)
  writeFileSync(file, output.outputText)
  return file
}

function collectStderr(child: ChildProcess): () => string {
  let text = ''
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (chunk: string) => {
    if (text.length < 64 * 1024) text += chunk
  })
  return () => text
}

/** Starts a bench helper that prints `{"port":N}` as its first stdout line. */
async function startHelper(name: string, script: string, args: string[]): Promise<Proc> {
  const child = spawn(process.execPath, [script, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  const stderr = collectStderr(child)
  const port = await new Promise<number>((resolve, reject) => {
    let buffered = ''
    const timer = setTimeout(() => reject(new Error(`${name} did not start within 15 s: ${stderr()}`)), 15_000)
    child.once('exit', (code) => reject(new Error(`${name} exited with ${String(code)} before listening: ${stderr()}`)))
    child.stdout?.setEncoding('utf8')
    child.stdout?.on('data', (chunk: string) => {
      buffered += chunk
      const newline = buffered.indexOf('\n')
      if (newline === -1) return
      clearTimeout(timer)
      try {
        resolve((JSON.parse(buffered.slice(0, newline)) as { port: number }).port)
      } catch (err: unknown) {
        reject(err as Error)
      }
    })
  })
  return { name, child, pid: pidOf(child), url: `http://127.0.0.1:${port}`, stderr }
}

function pidOf(child: ChildProcess): number {
  if (child.pid === undefined) throw new Error('spawn failed: no pid')
  return child.pid
}

/**
 * The proxy is run from a copy of dist/ taken when the run starts (right after `npm run build`),
 * so a rebuild while the bench runs cannot change what is measured halfway; the copy's
 * fingerprint goes into the report.
 */
function snapshotDist(): { main: string; fingerprint: string } {
  const source = join(ROOT, 'dist')
  if (!existsSync(join(source, 'main.js'))) throw new Error('dist/main.js is missing: run `npm run build` first (npm run bench does)')
  const target = join(BUILD, 'dist')
  rmSync(target, { recursive: true, force: true })
  mkdirSync(BUILD, { recursive: true })
  cpSync(source, target, { recursive: true })
  // dist/main.js reads ../package.json (for --version), and "type": "module" must apply to the copy.
  copyFileSync(join(ROOT, 'package.json'), join(BUILD, 'package.json'))
  const hash = createHash('sha256')
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const path = join(dir, entry.name)
      if (entry.isDirectory()) walk(path)
      else if (entry.name.endsWith('.js')) hash.update(path.slice(target.length)).update(readFileSync(path))
    }
  }
  walk(target)
  return { main: join(target, 'main.js'), fingerprint: hash.digest('hex').slice(0, 12) }
}

let proxyMain = join(ROOT, 'dist', 'main.js')

/** Starts the real proxy with its default config; its pino log goes to `logFile`. */
async function startProxy(upstreamUrl: string, logFile: string, configPath?: string): Promise<Proc> {
  const env: NodeJS.ProcessEnv = { ...process.env }
  for (const name of ['HOST', 'PORT', 'TOPROUTER_BASE_URL', 'TOPROUTER_PROXY_CONFIG', 'LOG_LEVEL', 'NODE_OPTIONS']) delete env[name]
  env.LOG_LEVEL = 'info'
  env.TOPROUTER_API_KEY = API_KEY
  const logFd = openSync(logFile, 'w')
  const args = [proxyMain, '--port', '0', '--upstream', upstreamUrl]
  if (configPath !== undefined) args.push('--config', configPath)
  const child = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', logFd, 'pipe'] })
  closeSync(logFd)
  const stderr = collectStderr(child)
  let exited: number | null | undefined
  child.once('exit', (code) => {
    exited = code
  })
  const deadline = Date.now() + 15_000
  while (Date.now() < deadline) {
    if (exited !== undefined) throw new Error(`proxy exited with ${String(exited)} before listening: ${stderr()}`)
    for (const line of readFileSync(logFile, 'utf8').split('\n')) {
      if (!line.includes('listening')) continue
      const entry = JSON.parse(line) as { port?: number; msg?: string }
      if (typeof entry.port === 'number' && entry.msg?.startsWith('toprouter-proxy listening') === true) {
        return { name: 'proxy', child, pid: pidOf(child), url: `http://127.0.0.1:${entry.port}`, stderr }
      }
    }
    await sleep(50)
  }
  child.kill('SIGKILL')
  throw new Error(`proxy did not log its listening line within 15 s: ${stderr()}`)
}

async function stop(proc: Proc): Promise<void> {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => proc.child.once('exit', () => resolve()))
  proc.child.kill('SIGTERM')
  const giveUp = new AbortController()
  const killed = await Promise.race([exited.then(() => false), sleep(10_000, true, { signal: giveUp.signal }).catch(() => false)])
  giveUp.abort()
  if (killed) {
    proc.child.kill('SIGKILL')
    await exited
  }
}

// ---- measurement ------------------------------------------------------------------------------

type PhaseId = 'throughput' | 'paced' | 'stream' | 'unloaded' | 'models'

interface PhaseResult {
  readonly phase: PhaseId
  readonly seconds: number
  /** Responses completed (for streams: whole streams). */
  readonly requests: number
  readonly rps: number
  readonly p50Ms: number
  readonly p90Ms: number | null
  readonly p99Ms: number
  readonly errors: number
  readonly non2xx: number
  /** The target's utime+stime per completed request (for direct: the upstream's), µs. */
  readonly cpuUsPerReq: number
  /** The upstream's utime+stime per request in the same phase, µs (a sanity check: ~equal across targets). */
  readonly upstreamCpuUsPerReq: number
  /** CPU the load generator (this process) used per request, µs. */
  readonly driverCpuUsPerReq: number
  readonly extra: Record<string, number>
}

interface TargetResult {
  readonly target: string
  readonly label: string
  readonly phases: Partial<Record<PhaseId, PhaseResult>>
  readonly peakRssMb: number
  readonly rssAtEndMb: number
  readonly log?: LogSummary
}

interface LogSummary {
  readonly lines: number
  readonly warnOrWorse: number
  readonly sample: string[]
}

interface Measured {
  readonly requests: number
  readonly seconds: number
  readonly rpsOverride?: number
  readonly p50Ms: number
  readonly p90Ms: number | null
  readonly p99Ms: number
  readonly errors: number
  readonly non2xx: number
  readonly extra?: Record<string, number>
}

/** Runs one phase, bracketing it with CPU readings of the measured process and the upstream. */
async function phase(id: PhaseId, cpuPid: number, upstreamPid: number, run: () => Promise<Measured>): Promise<PhaseResult> {
  const cpuBefore = cpuSeconds(cpuPid)
  const upstreamBefore = cpuSeconds(upstreamPid)
  const driverBefore = process.cpuUsage()
  const measured = await run()
  const driver = process.cpuUsage(driverBefore)
  const cpu = cpuSeconds(cpuPid) - cpuBefore
  const upstreamCpu = cpuSeconds(upstreamPid) - upstreamBefore
  const perRequest = (seconds: number) => (measured.requests > 0 ? (seconds * 1e6) / measured.requests : Number.NaN)
  return {
    phase: id,
    seconds: measured.seconds,
    requests: measured.requests,
    rps: measured.rpsOverride ?? measured.requests / measured.seconds,
    p50Ms: measured.p50Ms,
    p90Ms: measured.p90Ms,
    p99Ms: measured.p99Ms,
    errors: measured.errors,
    non2xx: measured.non2xx,
    cpuUsPerReq: perRequest(cpu),
    upstreamCpuUsPerReq: perRequest(upstreamCpu),
    driverCpuUsPerReq: perRequest((driver.user + driver.system) / 1e6),
    extra: measured.extra ?? {},
  }
}

function cannon(options: autocannon.Options): Promise<autocannon.Result> {
  return new Promise((resolve, reject) => {
    // autocannon stops on its sampling tick, so fractional (smoke) durations need a finer tick.
    autocannon({ pipelining: 1, timeout: 10, sampleInt: SMOKE ? 100 : 1000, ...options }, (err, result) => (err === null ? resolve(result) : reject(err)))
  })
}

function fromCannon(result: autocannon.Result): Measured {
  return {
    requests: result.requests.total,
    seconds: result.duration,
    p50Ms: result.latency.p50,
    p90Ms: result.latency.p90,
    p99Ms: result.latency.p99,
    errors: result.errors,
    non2xx: result.non2xx,
    extra: { timeouts: result.timeouts, resets: result.resets, sent: result.requests.sent },
  }
}

/** Nearest-rank percentile of an ascending array. */
function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[index] ?? Number.NaN
}

function sortedOf(values: number[] | Float64Array): Float64Array {
  return Float64Array.from(values).sort()
}

/**
 * Open-loop paced load: request i is due at start + i/rate and is sent then (or as soon as a slot
 * frees when `maxInFlight` are outstanding), whatever happened to earlier requests. Scheduling is
 * setTimeout for gaps ≥ 1 ms and setImmediate for shorter ones, firing every request that is due on
 * each turn, so sends stay evenly spaced instead of the per-second bursts autocannon -R produces.
 * Latency is measured from the actual send; `lag` is how late each send was against its slot.
 */
async function pacedLoad(baseUrl: string, rate: number, seconds: number, maxInFlight: number): Promise<Measured> {
  const pool = new Pool(baseUrl, { connections: maxInFlight, pipelining: 1, keepAliveTimeout: 30_000 })
  const request = () =>
    pool.request({ method: 'POST', path: CHAT_PATH, headers: REQUEST_HEADERS, body: CHAT_BODY }).then(async (response) => {
      await response.body.dump()
      return response.statusCode
    })
  // Open the connections first, unmeasured.
  await Promise.allSettled(Array.from({ length: maxInFlight * 2 }, () => request()))

  const total = Math.max(1, Math.round(rate * seconds))
  const intervalMs = 1000 / rate
  const latencies = new Float64Array(total)
  const fromSlot = new Float64Array(total)
  const lags = new Float64Array(total)
  let sent = 0
  let completed = 0
  let inFlight = 0
  let errors = 0
  let non2xx = 0
  let cappedSends = 0
  let waitingForSlot = false
  const startedAt = performance.now() + 5

  await new Promise<void>((resolve) => {
    const fire = (now: number) => {
      const index = sent
      sent += 1
      inFlight += 1
      const slot = startedAt + index * intervalMs
      lags[index] = now - slot
      request()
        .then(
          (status) => {
            if (status < 200 || status > 299) non2xx += 1
          },
          () => {
            errors += 1
          },
        )
        .finally(() => {
          const end = performance.now()
          latencies[index] = end - now
          fromSlot[index] = end - slot
          inFlight -= 1
          completed += 1
          if (completed === total) resolve()
          else if (waitingForSlot) {
            waitingForSlot = false
            tick()
          }
        })
    }
    const tick = () => {
      const now = performance.now()
      const due = Math.min(total, Math.floor((now - startedAt) / intervalMs) + 1)
      while (sent < due && inFlight < maxInFlight) fire(now)
      if (sent >= total) return
      if (sent < due) {
        // At the in-flight cap: the next completion sends the overdue requests.
        cappedSends += 1
        waitingForSlot = true
        return
      }
      // Timers have 1 ms granularity: sleep with setTimeout unless the next slot is only a sliver
      // away, and only then turn with setImmediate (spinning would steal a core from the target).
      const wait = startedAt + sent * intervalMs - now
      if (wait > 0.2) setTimeout(tick, Math.max(1, Math.floor(wait)))
      else setImmediate(tick)
    }
    setTimeout(tick, 5)
  })
  const elapsedS = (performance.now() - startedAt) / 1000
  await pool.close()

  const sorted = sortedOf(latencies)
  const sortedFromSlot = sortedOf(fromSlot)
  const sortedLags = sortedOf(lags)
  return {
    requests: total,
    seconds: elapsedS,
    p50Ms: percentile(sorted, 50),
    p90Ms: percentile(sorted, 90),
    p99Ms: percentile(sorted, 99),
    errors,
    non2xx,
    extra: {
      targetRate: rate,
      sendLagP50Ms: percentile(sortedLags, 50),
      sendLagP99Ms: percentile(sortedLags, 99),
      fromSlotP50Ms: percentile(sortedFromSlot, 50),
      fromSlotP99Ms: percentile(sortedFromSlot, 99),
      cappedTurns: cappedSends,
    },
  }
}

/** One request at a time over one keep-alive connection: the latency the proxy adds when idle. */
async function unloadedNonStreaming(baseUrl: string, count: number): Promise<Measured> {
  const client = new Client(baseUrl, { pipelining: 1, keepAliveTimeout: 30_000 })
  let errors = 0
  let non2xx = 0
  const once = async (): Promise<void> => {
    const response = await client.request({ method: 'POST', path: CHAT_PATH, headers: REQUEST_HEADERS, body: CHAT_BODY })
    await response.body.dump()
    if (response.statusCode < 200 || response.statusCode > 299) non2xx += 1
  }
  for (let i = 0; i < 20; i++) await once().catch(() => undefined)
  non2xx = 0
  const latencies: number[] = []
  const startedAt = performance.now()
  for (let i = 0; i < count; i++) {
    const t0 = performance.now()
    try {
      await once()
    } catch {
      errors += 1
    }
    latencies.push(performance.now() - t0)
  }
  const seconds = (performance.now() - startedAt) / 1000
  await client.close()
  const sorted = sortedOf(latencies)
  return { requests: count, seconds, p50Ms: percentile(sorted, 50), p90Ms: percentile(sorted, 90), p99Ms: percentile(sorted, 99), errors, non2xx }
}

/** One stream at a time: time to the first body chunk (the first SSE event) and to the end. */
async function unloadedStreaming(baseUrl: string, count: number): Promise<Measured> {
  const client = new Client(baseUrl, { pipelining: 1, keepAliveTimeout: 30_000 })
  let errors = 0
  let non2xx = 0
  let badStreams = 0
  const firstBytes: number[] = []
  const totals: number[] = []
  const once = async (record: boolean): Promise<void> => {
    const t0 = performance.now()
    const response = await client.request({ method: 'POST', path: CHAT_PATH, headers: REQUEST_HEADERS, body: STREAM_BODY })
    let first: number | undefined
    let text = ''
    for await (const chunk of response.body) {
      first ??= performance.now() - t0
      text += (chunk as Buffer).toString('latin1')
    }
    const total = performance.now() - t0
    if (response.statusCode < 200 || response.statusCode > 299) non2xx += 1
    else if (!text.endsWith('data: [DONE]\n\n') || !text.includes('"finish_reason":"stop"')) badStreams += 1
    if (record && first !== undefined) {
      firstBytes.push(first)
      totals.push(total)
    }
  }
  for (let i = 0; i < 10; i++) await once(false).catch(() => undefined)
  non2xx = 0
  badStreams = 0
  const startedAt = performance.now()
  for (let i = 0; i < count; i++) {
    try {
      await once(true)
    } catch {
      errors += 1
    }
  }
  const seconds = (performance.now() - startedAt) / 1000
  await client.close()
  const sortedFirst = sortedOf(firstBytes)
  const sortedTotal = sortedOf(totals)
  return {
    requests: count,
    seconds,
    p50Ms: percentile(sortedFirst, 50),
    p90Ms: percentile(sortedFirst, 90),
    p99Ms: percentile(sortedFirst, 99),
    errors: errors + badStreams,
    non2xx,
    extra: { streamTotalP50Ms: percentile(sortedTotal, 50), streamTotalP99Ms: percentile(sortedTotal, 99), badStreams },
  }
}

async function measureTarget(label: string, url: string, cpuPid: number, upstreamPid: number): Promise<TargetResult['phases']> {
  const phases: TargetResult['phases'] = {}
  const pause = () => sleep(SMOKE ? 50 : 500)
  const chat = { url: url + CHAT_PATH, method: 'POST', headers: REQUEST_HEADERS }

  process.stdout.write(`  [${label}] (a) non-streaming throughput: ${PLAN.warmupS} s warm-up, ${PLAN.throughputS} s\n`)
  if (PLAN.warmupS > 0) await cannon({ ...chat, body: CHAT_BODY, connections: CONNECTIONS.throughput, duration: PLAN.warmupS })
  phases.throughput = await phase('throughput', cpuPid, upstreamPid, async () =>
    fromCannon(await cannon({ ...chat, body: CHAT_BODY, connections: CONNECTIONS.throughput, duration: PLAN.throughputS })),
  )
  await pause()

  process.stdout.write(`  [${label}] (b) paced ${PLAN.pacedRate} req/s, ${PLAN.pacedS} s\n`)
  phases.paced = await phase('paced', cpuPid, upstreamPid, () => pacedLoad(url, PLAN.pacedRate, PLAN.pacedS, CONNECTIONS.pacedMaxInFlight))
  await pause()

  process.stdout.write(`  [${label}] (c) streaming, ${CONNECTIONS.stream} connections, ${PLAN.streamS} s\n`)
  phases.stream = await phase('stream', cpuPid, upstreamPid, async () =>
    fromCannon(await cannon({ ...chat, body: STREAM_BODY, connections: CONNECTIONS.stream, duration: PLAN.streamS })),
  )
  await pause()

  process.stdout.write(`  [${label}] (d) unloaded: ${PLAN.unloadedN} requests and ${PLAN.unloadedStreamsN} streams, one at a time\n`)
  const unloaded = await phase('unloaded', cpuPid, upstreamPid, () => unloadedNonStreaming(url, PLAN.unloadedN))
  const unloadedStream = await phase('unloaded', cpuPid, upstreamPid, () => unloadedStreaming(url, PLAN.unloadedStreamsN))
  phases.unloaded = {
    ...unloaded,
    errors: unloaded.errors + unloadedStream.errors,
    non2xx: unloaded.non2xx + unloadedStream.non2xx,
    extra: {
      firstByteP50Ms: unloadedStream.p50Ms,
      firstByteP99Ms: unloadedStream.p99Ms,
      streamTotalP50Ms: unloadedStream.extra.streamTotalP50Ms ?? Number.NaN,
      streams: unloadedStream.requests,
      streamCpuUsPerStream: unloadedStream.cpuUsPerReq,
      badStreams: unloadedStream.extra.badStreams ?? 0,
    },
  }
  await pause()

  process.stdout.write(`  [${label}] (e) GET /models, ${CONNECTIONS.models} connections, ${PLAN.modelsS} s\n`)
  phases.models = await phase('models', cpuPid, upstreamPid, async () =>
    fromCannon(await cannon({ url: url + MODELS_PATH, method: 'GET', headers: GET_HEADERS, connections: CONNECTIONS.models, duration: PLAN.modelsS })),
  )
  return phases
}

function summariseLog(file: string): LogSummary {
  const lines = readFileSync(file, 'utf8').split('\n').filter((line) => line !== '')
  let warnOrWorse = 0
  const sample: string[] = []
  for (const line of lines) {
    const level = /"level":(\d+)/.exec(line)?.[1]
    if (level !== undefined && Number(level) >= 40) {
      warnOrWorse += 1
      if (sample.length < 5) sample.push(line.slice(0, 500))
    }
  }
  return { lines: lines.length, warnOrWorse, sample }
}

// ---- memory phase -----------------------------------------------------------------------------

interface MemoryResult {
  readonly streams: number
  readonly holdS: number
  readonly chunkDelayMs: number
  readonly config: string
  readonly before: { rssMb: number; sockets: number; upstreamSockets: number; upstreamActiveStreams: number }
  readonly during: {
    rssMb: number
    peakRssMb: number
    sockets: number
    upstreamSockets: number
    upstreamActiveStreams: number
    streamsWithHeaders: number
    streamsWithFirstEvent: number
  }
  readonly after: { rssMb: number; sockets: number; upstreamSockets: number; upstreamActiveStreams: number; secondsAfterClose: number }
  readonly peakRssMb: number
  readonly streamErrors: number
  readonly non2xx: number
  readonly completedBeforeClose: number
  readonly samples: { t: number; rssMb: number; sockets: number; upstreamSockets: number; upstreamActiveStreams: number; withHeaders: number; withFirstEvent: number }[]
  readonly log?: LogSummary
}

async function activeStreams(upstreamUrl: string): Promise<number> {
  const response = await fetch(`${upstreamUrl}/_bench/stats`)
  return ((await response.json()) as { activeStreams: number }).activeStreams
}

/**
 * 1000 concurrent long streams through the proxy (upstream events 200 ms apart), held open for
 * ~30 s, then every client connection is closed: RSS and open sockets before, during and after.
 */
async function memoryPhase(upstreamScript: string): Promise<MemoryResult> {
  const chunkDelayMs = 200
  const upstream = await startHelper('upstream (200 ms chunks)', upstreamScript, ['--port', '0', '--chunk-delay-ms', String(chunkDelayMs)])
  const logFile = join(RESULTS, 'proxy-memory.log')
  const proxy = await startProxy(upstream.url, logFile, flags['memory-config'])
  const mb = (kb: number) => kb / 1024
  try {
    await sleep(500)
    const before = {
      rssMb: mb(statusKb(proxy.pid, 'VmRSS')),
      sockets: socketCount(proxy.pid),
      upstreamSockets: socketCount(upstream.pid),
      upstreamActiveStreams: await activeStreams(upstream.url),
    }
    // Events for longer than the hold, so the streams are still open when the clients leave.
    const chunks = Math.ceil((MEMORY_HOLD_S * 1000) / chunkDelayMs) + 100
    const pool = new Pool(proxy.url, { connections: MEMORY_STREAMS, pipelining: 1, keepAliveTimeout: 120_000, bodyTimeout: 0, headersTimeout: 0 })
    const controllers: AbortController[] = []
    let withHeaders = 0
    let withFirstEvent = 0
    let completed = 0
    let streamErrors = 0
    let non2xx = 0
    let closing = false
    const streams = Array.from({ length: MEMORY_STREAMS }, async () => {
      const controller = new AbortController()
      controllers.push(controller)
      try {
        const response = await pool.request({
          method: 'POST',
          path: CHAT_PATH,
          headers: { ...REQUEST_HEADERS, 'x-bench-chunks': String(chunks) },
          body: STREAM_BODY,
          signal: controller.signal,
        })
        withHeaders += 1
        if (response.statusCode < 200 || response.statusCode > 299) non2xx += 1
        let first = true
        for await (const _chunk of response.body) {
          if (first) {
            withFirstEvent += 1
            first = false
          }
        }
        completed += 1
      } catch {
        if (!closing) streamErrors += 1
      }
    })
    const samples: MemoryResult['samples'] = []
    const startedAt = performance.now()
    let peakSockets = 0
    let peakUpstreamSockets = 0
    while (performance.now() - startedAt < MEMORY_HOLD_S * 1000) {
      await sleep(1000)
      const sample = {
        t: Math.round((performance.now() - startedAt) / 100) / 10,
        rssMb: mb(statusKb(proxy.pid, 'VmRSS')),
        sockets: socketCount(proxy.pid),
        upstreamSockets: socketCount(upstream.pid),
        upstreamActiveStreams: await activeStreams(upstream.url),
        withHeaders,
        withFirstEvent,
      }
      peakSockets = Math.max(peakSockets, sample.sockets)
      peakUpstreamSockets = Math.max(peakUpstreamSockets, sample.upstreamSockets)
      samples.push(sample)
      process.stdout.write(
        `  [memory] t=${sample.t}s proxy RSS ${sample.rssMb.toFixed(1)} MB, proxy sockets ${sample.sockets}, upstream sockets ${sample.upstreamSockets}, ` +
          `upstream streams ${sample.upstreamActiveStreams}, client streams with headers ${withHeaders}, with an event ${withFirstEvent}\n`,
      )
    }
    const last = samples[samples.length - 1]
    const during = {
      rssMb: last?.rssMb ?? Number.NaN,
      peakRssMb: Math.max(...samples.map((s) => s.rssMb)),
      sockets: peakSockets,
      upstreamSockets: peakUpstreamSockets,
      upstreamActiveStreams: Math.max(...samples.map((s) => s.upstreamActiveStreams)),
      streamsWithHeaders: withHeaders,
      streamsWithFirstEvent: withFirstEvent,
    }
    const completedBeforeClose = completed
    closing = true
    for (const controller of controllers) controller.abort()
    await pool.destroy()
    await Promise.allSettled(streams)
    // Long enough for V8 to give memory back (RSS returns near the baseline after ~30 s).
    const settleS = Number(process.env.BENCH_SETTLE_S ?? 40)
    await sleep(settleS * 1000)
    const after = {
      rssMb: mb(statusKb(proxy.pid, 'VmRSS')),
      sockets: socketCount(proxy.pid),
      upstreamSockets: socketCount(upstream.pid),
      upstreamActiveStreams: await activeStreams(upstream.url),
      secondsAfterClose: settleS,
    }
    const peakRssMb = mb(statusKb(proxy.pid, 'VmHWM'))
    process.stdout.write(
      `  [memory] ${settleS} s after closing: proxy RSS ${after.rssMb.toFixed(1)} MB, proxy sockets ${after.sockets}, upstream sockets ${after.upstreamSockets}, upstream streams ${after.upstreamActiveStreams}\n`,
    )
    return {
      streams: MEMORY_STREAMS,
      holdS: MEMORY_HOLD_S,
      chunkDelayMs,
      config: flags['memory-config'] ?? 'default',
      before,
      during,
      after,
      peakRssMb,
      streamErrors,
      non2xx,
      completedBeforeClose,
      samples,
    }
  } finally {
    await stop(proxy)
    await stop(upstream)
  }
}

// ---- output -----------------------------------------------------------------------------------

const PHASE_TITLES: Record<PhaseId, string> = {
  throughput: `(a) non-streaming, max throughput — ${CONNECTIONS.throughput} connections, ${PLAN.throughputS} s after ${PLAN.warmupS} s warm-up`,
  paced: `(b) paced ${PLAN.pacedRate} req/s, evenly spaced, open loop (≤ ${CONNECTIONS.pacedMaxInFlight} in flight), ${PLAN.pacedS} s — latency from send`,
  stream: `(c) streaming (20 SSE events + [DONE]) — ${CONNECTIONS.stream} connections, ${PLAN.streamS} s; latency = whole stream`,
  unloaded: `(d) unloaded — ${PLAN.unloadedN} requests then ${PLAN.unloadedStreamsN} streams, one at a time`,
  models: `(e) GET /models (~6 KB) — ${CONNECTIONS.models} connections, ${PLAN.modelsS} s`,
}

function fmt(value: number | null | undefined, digits = 2): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return '–'
  if (Math.abs(value) >= 999.5) return Math.round(value).toLocaleString('en-US')
  if (Math.abs(value) >= 100) return value.toFixed(0)
  if (Math.abs(value) >= 10) return value.toFixed(1)
  return value.toFixed(digits)
}

function ratio(a: number | null | undefined, b: number | null | undefined): string {
  if (a === null || a === undefined || b === null || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return '–'
  return `${(a / b).toFixed(2)}×`
}

interface Column {
  readonly title: string
  readonly value: (p: PhaseResult) => number | null | undefined
  readonly ratio: boolean
  readonly digits?: number
  /** autocannon's latencies are whole milliseconds; 0 means under 1 ms. */
  readonly wholeMs?: boolean
  readonly count?: boolean
}

const COUNT_COLUMNS: Column[] = [
  { title: 'errors', value: (p) => p.errors, ratio: false, count: true },
  { title: 'non-2xx', value: (p) => p.non2xx, ratio: false, count: true },
]

function cell(column: Column, p: PhaseResult): string {
  const value = column.value(p)
  if (column.count === true) return value === null || value === undefined ? '–' : String(value)
  if (column.wholeMs === true && value === 0) return '<1'
  if (column.wholeMs === true && value !== null && value !== undefined) return String(value)
  return fmt(value, column.digits)
}

const COLUMNS: Record<PhaseId, Column[]> = {
  throughput: [
    { title: 'req/s', value: (p) => p.rps, ratio: true },
    { title: 'p50 ms', value: (p) => p.p50Ms, ratio: true, wholeMs: true },
    { title: 'p99 ms', value: (p) => p.p99Ms, ratio: true, wholeMs: true },
    { title: 'CPU µs/req', value: (p) => p.cpuUsPerReq, ratio: true },
    ...COUNT_COLUMNS,
  ],
  paced: [
    { title: 'req/s', value: (p) => p.rps, ratio: true },
    { title: 'p50 ms', value: (p) => p.p50Ms, ratio: true, digits: 3 },
    { title: 'p90 ms', value: (p) => p.p90Ms, ratio: true, digits: 3 },
    { title: 'p99 ms', value: (p) => p.p99Ms, ratio: true, digits: 3 },
    { title: 'CPU µs/req', value: (p) => p.cpuUsPerReq, ratio: true },
    { title: 'send lag p99 ms', value: (p) => p.extra.sendLagP99Ms, ratio: false, digits: 3 },
    ...COUNT_COLUMNS,
  ],
  stream: [
    { title: 'streams/s', value: (p) => p.rps, ratio: true },
    { title: 'p50 ms', value: (p) => p.p50Ms, ratio: true, wholeMs: true },
    { title: 'p99 ms', value: (p) => p.p99Ms, ratio: true, wholeMs: true },
    { title: 'CPU µs/stream', value: (p) => p.cpuUsPerReq, ratio: true },
    ...COUNT_COLUMNS,
  ],
  unloaded: [
    { title: 'req/s', value: (p) => p.rps, ratio: true },
    { title: 'p50 ms', value: (p) => p.p50Ms, ratio: true, digits: 3 },
    { title: 'p99 ms', value: (p) => p.p99Ms, ratio: true, digits: 3 },
    { title: 'CPU µs/req', value: (p) => p.cpuUsPerReq, ratio: true },
    { title: 'stream first byte p50 ms', value: (p) => p.extra.firstByteP50Ms, ratio: true, digits: 3 },
    { title: 'stream first byte p99 ms', value: (p) => p.extra.firstByteP99Ms, ratio: true, digits: 3 },
    { title: 'CPU µs/stream', value: (p) => p.extra.streamCpuUsPerStream, ratio: true },
    ...COUNT_COLUMNS,
  ],
  models: [
    { title: 'req/s', value: (p) => p.rps, ratio: true },
    { title: 'p50 ms', value: (p) => p.p50Ms, ratio: true, wholeMs: true },
    { title: 'p99 ms', value: (p) => p.p99Ms, ratio: true, wholeMs: true },
    { title: 'CPU µs/req', value: (p) => p.cpuUsPerReq, ratio: true },
    ...COUNT_COLUMNS,
  ],
}

function phaseTable(id: PhaseId, targets: TargetResult[]): string {
  const columns = COLUMNS[id]
  const rows: string[] = [`| target | ${columns.map((c) => c.title).join(' | ')} |`, `|---|${columns.map(() => '---:').join('|')}|`]
  for (const target of targets) {
    const p = target.phases[id]
    rows.push(`| ${target.label} | ${columns.map((c) => (p === undefined ? '–' : cell(c, p))).join(' | ')} |`)
  }
  const byName = (name: string) => targets.find((t) => t.label === name)?.phases[id]
  const ratioRow = (label: string, a: PhaseResult | undefined, b: PhaseResult | undefined) => {
    if (a === undefined || b === undefined) return
    rows.push(`| ${label} | ${columns.map((c) => (c.ratio ? ratio(c.value(a), c.value(b)) : '')).join(' | ')} |`)
  }
  ratioRow('**proxy ÷ floor**', byName('proxy'), byName('floor'))
  ratioRow('**proxy ÷ direct**', byName('proxy'), byName('direct'))
  ratioRow('drift: direct (end) ÷ direct', byName('direct (end)'), byName('direct'))
  return rows.join('\n')
}

interface Report {
  readonly timestamp: string
  readonly mode: 'full' | 'smoke' | 'memory-only'
  readonly machine: Record<string, string | number>
  readonly plan: typeof PLAN & { connections: typeof CONNECTIONS; clockTicksPerSecond: number }
  readonly upstream: { completionBytes: number; modelsBytes: number }
  readonly targets: TargetResult[]
  readonly memory?: MemoryResult
  readonly problems: string[]
  readonly wallSeconds: number
}

function markdown(report: Report): string {
  const m = report.machine
  const lines: string[] = [
    `# toprouter-proxy benchmark — ${report.mode} run`,
    '',
    `- when: ${report.timestamp} (took ${report.wallSeconds.toFixed(0)} s)`,
    `- machine: ${m.cpus} × ${m.cpuModel}, ${m.memoryGb} GB RAM, ${m.os}; load average at start ${m.loadAverage}`,
    `- software: node ${m.node}, fastify ${m.fastify}, undici ${m.undici}, @fastify/http-proxy ${m.httpProxy}, autocannon ${m.autocannon}`,
    `- proxy measured: commit ${m.commit}; dist/ snapshot fingerprint ${m.distFingerprint}`,
    `- CPU µs/req = the target process's utime+stime (/proc/<pid>/stat, ${report.plan.clockTicksPerSecond} ticks/s) over the phase ÷ responses completed; for \`direct\` it is the upstream's. Peak RSS = VmHWM.`,
    '- latency: autocannon phases (a, c, e) have 1 ms resolution; paced and unloaded phases (b, d) are timed with performance.now().',
    '',
  ]
  if (report.targets.length > 0) {
    for (const id of ['throughput', 'paced', 'stream', 'unloaded', 'models'] as const) {
      lines.push(`## ${PHASE_TITLES[id]}`, '', phaseTable(id, report.targets), '')
    }
    lines.push('## Memory and logs', '', '| target | peak RSS MB (VmHWM) | RSS at end MB | log lines | warn/error log lines |', '|---|---:|---:|---:|---:|')
    for (const target of report.targets) {
      lines.push(`| ${target.label} | ${fmt(target.peakRssMb, 1)} | ${fmt(target.rssAtEndMb, 1)} | ${target.log?.lines ?? '–'} | ${target.log?.warnOrWorse ?? '–'} |`)
    }
    const proxy = report.targets.find((t) => t.label === 'proxy')
    const floor = report.targets.find((t) => t.label === 'floor')
    const direct = report.targets.find((t) => t.label === 'direct')
    if (proxy !== undefined && floor !== undefined) lines.push(`| **proxy ÷ floor** | ${ratio(proxy.peakRssMb, floor.peakRssMb)} | ${ratio(proxy.rssAtEndMb, floor.rssAtEndMb)} | | |`)
    if (proxy !== undefined && direct !== undefined) lines.push(`| **proxy ÷ direct** | ${ratio(proxy.peakRssMb, direct.peakRssMb)} | ${ratio(proxy.rssAtEndMb, direct.rssAtEndMb)} | | |`)
    lines.push('', '`direct`\'s memory is the upstream process\'s (its VmHWM covers everything it served up to then).', '')
  }
  if (report.memory !== undefined) {
    const mem = report.memory
    lines.push(
      `## Memory phase — ${mem.streams} concurrent streams through the proxy, events ${mem.chunkDelayMs} ms apart, held ${mem.holdS} s, then closed (config: ${mem.config})`,
      '',
      '| | proxy RSS MB | proxy sockets | upstream sockets | streams the upstream is writing | client streams with headers | client streams with an event |',
      '|---|---:|---:|---:|---:|---:|---:|',
      `| before | ${fmt(mem.before.rssMb, 1)} | ${mem.before.sockets} | ${mem.before.upstreamSockets} | ${mem.before.upstreamActiveStreams} | | |`,
      `| during (RSS at end of hold, counts = peak) | ${fmt(mem.during.rssMb, 1)} | ${mem.during.sockets} | ${mem.during.upstreamSockets} | ${mem.during.upstreamActiveStreams} | ${mem.during.streamsWithHeaders} | ${mem.during.streamsWithFirstEvent} |`,
      `| ${mem.after.secondsAfterClose} s after closing | ${fmt(mem.after.rssMb, 1)} | ${mem.after.sockets} | ${mem.after.upstreamSockets} | ${mem.after.upstreamActiveStreams} | | |`,
      '',
      `Peak proxy RSS (VmHWM) ${fmt(mem.peakRssMb, 1)} MB; stream errors before the close ${mem.streamErrors}; non-2xx ${mem.non2xx}; streams finished before the close ${mem.completedBeforeClose}. Sockets include the listening socket.`,
      '',
    )
  }
  if (report.problems.length > 0) lines.push('## Problems', '', ...report.problems.map((p) => `- ${p}`), '')
  else lines.push('No errors and no non-2xx responses in any phase.', '')
  return lines.join('\n')
}

function versionOf(pkg: string): string {
  try {
    return (JSON.parse(readFileSync(join(ROOT, 'node_modules', pkg, 'package.json'), 'utf8')) as { version: string }).version
  } catch {
    return 'unknown'
  }
}

function commitOf(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim()
    const changed = execFileSync('git', ['status', '--porcelain', '--', 'src'], { cwd: ROOT, encoding: 'utf8' })
      .split('\n')
      .filter((line) => line.trim() !== '').length
    return changed > 0 ? `${head} + uncommitted changes to ${changed} path(s) under src/` : head
  } catch {
    return 'unknown'
  }
}

function machineInfo(): Record<string, string | number> {
  const cpus = os.cpus()
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryGb: Math.round(os.totalmem() / 1024 ** 3),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    loadAverage: os.loadavg().map((l) => l.toFixed(2)).join(' '),
    node: process.version,
    fastify: versionOf('fastify'),
    undici: versionOf('undici'),
    httpProxy: versionOf('@fastify/http-proxy'),
    autocannon: versionOf('autocannon'),
    commit: commitOf(),
  }
}

function writeResults(report: Report, base: string): void {
  mkdirSync(RESULTS, { recursive: true })
  for (const ext of ['json', 'md']) {
    const latest = join(RESULTS, `${base}.${ext}`)
    if (existsSync(latest)) renameSync(latest, join(RESULTS, `${base === 'latest' ? 'previous' : `${base}-previous`}.${ext}`))
  }
  writeFileSync(join(RESULTS, `${base}.json`), `${JSON.stringify(report, null, 2)}\n`)
  writeFileSync(join(RESULTS, `${base}.md`), markdown(report))
}

function problemsOf(targets: TargetResult[], memory: MemoryResult | undefined): string[] {
  const problems: string[] = []
  for (const target of targets) {
    for (const result of Object.values(target.phases)) {
      if (result.errors > 0 || result.non2xx > 0) {
        problems.push(`${target.label} ${result.phase}: ${result.errors} errors, ${result.non2xx} non-2xx (${JSON.stringify(result.extra)})`)
      }
    }
    if (target.log !== undefined && target.log.warnOrWorse > 0) {
      problems.push(`${target.label}: ${target.log.warnOrWorse} warn/error log lines, e.g. ${target.log.sample[0] ?? ''}`)
    }
  }
  if (memory !== undefined) {
    if (memory.streamErrors > 0 || memory.non2xx > 0) problems.push(`memory phase: ${memory.streamErrors} stream errors, ${memory.non2xx} non-2xx before the close`)
    if (memory.during.streamsWithFirstEvent < memory.streams) {
      problems.push(`memory phase: only ${memory.during.streamsWithFirstEvent} of ${memory.streams} streams received an event during the ${memory.holdS} s hold`)
    }
  }
  return problems
}

// ---- main -------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const wallStart = performance.now()
  mkdirSync(RESULTS, { recursive: true })
  const snapshot = snapshotDist()
  proxyMain = snapshot.main
  const mode: Report['mode'] = flags['memory-only'] ? 'memory-only' : SMOKE ? 'smoke' : 'full'
  const upstreamScript = transpile('upstream')
  const floorScript = transpile('floor')
  const machine: Record<string, string | number> = { ...machineInfo(), distFingerprint: snapshot.fingerprint }
  process.stdout.write(`toprouter-proxy bench (${mode}): node ${process.version}, ${machine.cpus} CPUs, ${CLK_TCK} ticks/s\n`)

  const targets: TargetResult[] = []
  let upstreamInfo = { completionBytes: 0, modelsBytes: 0 }
  if (mode !== 'memory-only') {
    const upstream = await startHelper('upstream', upstreamScript, ['--port', '0'])
    upstreamInfo = await fetch(`${upstream.url}${MODELS_PATH}`)
      .then((r) => r.arrayBuffer())
      .then(async (models) => {
        const chat = await fetch(`${upstream.url}${CHAT_PATH}`, { method: 'POST', headers: REQUEST_HEADERS, body: CHAT_BODY }).then((r) => r.arrayBuffer())
        return { completionBytes: chat.byteLength, modelsBytes: models.byteLength }
      })
    process.stdout.write(`upstream on ${upstream.url} (pid ${upstream.pid})\n`)
    try {
      const sequence = SMOKE ? (['direct', 'proxy'] as const) : (['direct', 'floor', 'proxy', 'direct'] as const)
      let directRuns = 0
      for (const target of sequence) {
        const label = target === 'direct' ? (directRuns++ === 0 ? 'direct' : 'direct (end)') : target
        process.stdout.write(`${label}:\n`)
        let proc: Proc | undefined
        let logFile: string | undefined
        if (target === 'floor') proc = await startHelper('floor', floorScript, ['--port', '0', '--upstream', upstream.url])
        if (target === 'proxy') {
          logFile = join(RESULTS, 'proxy.log')
          proc = await startProxy(upstream.url, logFile)
        }
        const measuredPid = proc?.pid ?? upstream.pid
        try {
          const phases = await measureTarget(label, proc?.url ?? upstream.url, measuredPid, upstream.pid)
          const result: TargetResult = {
            target,
            label,
            phases,
            peakRssMb: statusKb(measuredPid, 'VmHWM') / 1024,
            rssAtEndMb: statusKb(measuredPid, 'VmRSS') / 1024,
          }
          targets.push(result)
        } finally {
          if (proc !== undefined) await stop(proc)
        }
        if (logFile !== undefined) {
          const last = targets[targets.length - 1]
          if (last !== undefined) targets[targets.length - 1] = { ...last, log: summariseLog(logFile) }
        }
      }
    } finally {
      await stop(upstream)
    }
  }

  let memory: MemoryResult | undefined
  if (flags.memory || flags['memory-only']) {
    process.stdout.write(`memory phase: ${MEMORY_STREAMS} streams held ${MEMORY_HOLD_S} s\n`)
    memory = await memoryPhase(upstreamScript)
    memory = { ...memory, log: summariseLog(join(RESULTS, 'proxy-memory.log')) }
  }

  const report: Report = {
    timestamp: new Date().toISOString(),
    mode,
    machine,
    plan: { ...PLAN, connections: CONNECTIONS, clockTicksPerSecond: CLK_TCK },
    upstream: upstreamInfo,
    targets,
    ...(memory === undefined ? {} : { memory }),
    problems: problemsOf(targets, memory),
    wallSeconds: (performance.now() - wallStart) / 1000,
  }
  const text = markdown(report)
  process.stdout.write(`\n${text}\n`)
  // A smoke (CI) or a memory-only run never replaces the last full run's latest.*.
  const base = mode === 'memory-only' ? 'memory' : mode === 'smoke' ? 'smoke' : 'latest'
  writeResults(report, base)
  process.stdout.write(`written to ${join('bench', 'results', base)}.{md,json}\n`)
  if (report.problems.length > 0) {
    process.stderr.write(`bench: ${report.problems.length} problem(s):\n${report.problems.map((p) => `  - ${p}`).join('\n')}\n`)
    process.exitCode = 1
  }
}

await main()
