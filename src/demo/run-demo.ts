import { connect } from 'node:net'
import { Writable } from 'node:stream'
import { parseArgs } from 'node:util'
import OpenAI, { type ClientOptions } from 'openai'
import { Agent, fetch as undiciFetch } from 'undici'
import { buildApp, type ProxyApp } from '../app.js'
import { loadConfig } from '../config.js'
import { buildLogger } from '../logging.js'
import { CHUNKS_BEFORE_CUT, type FaultUpstream, startFaultUpstream } from './fault-upstream.js'
import { FALLBACK_MODEL, SCENARIOS, type Scenario } from './scenarios.js'

/**
 * `toprouter-proxy demo`: a fake TopRouter that injects the classic faults (fault-upstream.ts), the
 * proxy in front of it (built in-process, on 127.0.0.1 port 0, with short timeouts), and one
 * scripted app — the official `openai` SDK, the same settings both ways — run through every
 * scenario first straight at the fake, then through the proxy, the fault counts reset in between.
 * It prints what the app saw both ways side by side, then closes everything and checks that each
 * port it opened refuses connections. Only 127.0.0.1 is ever contacted.
 */

export interface DemoIo {
  readonly stdout: (text: string) => void
  readonly stderr: (text: string) => void
}

export const DEMO_HELP = `toprouter-proxy demo — see what an app gets from a flaky upstream, without and with the proxy

Usage: toprouter-proxy demo [--hold-s N]
       npm run demo

Starts a fake TopRouter on 127.0.0.1 that injects the classic faults (a 429 with Retry-After, a
burst of 503s, a connection reset, a silent upstream, a cut stream, a dropped stream, an outage
with a fallback), puts the proxy in front of it, runs a scripted app (the openai SDK, maxRetries 0,
timeout 3 s) through each fault directly and then through the proxy, and prints what the app saw
both ways, side by side. The proxy's /status page (URL printed first) shows it live. Takes about
10 s; nothing leaves the machine; every port it opened is closed (and checked) at the end.

Options:
  --hold-s <N>   keep the fake and the proxy running N seconds after the table, to look at /status
  --help         show this help
`

/** The app's SDK settings, the same both ways: no SDK retries (the app without a proxy does none). */
const SDK_TIMEOUT_MS = 3000
const SDK_MAX_RETRIES = 0

/**
 * The proxy's config for the demo: the defaults with short timeouts and backoff, so every fault
 * plays out in a second or two, a fallback for the outage, a breaker that opens after 5 failures,
 * and continuation for one model only (so the other cut stream shows the error event).
 */
const DEMO_CONFIG = {
  upstream: {
    connectTimeoutMs: 1000,
    firstByteTimeoutMs: 1500,
    responseTimeoutMs: 5000,
    streamIdleTimeoutMs: 1000,
    requestTimeoutMs: 10000,
  },
  retry: { maxAttempts: 3, baseDelayMs: 50, maxDelayMs: 200 },
  breaker: { volumeThreshold: 5, errorThresholdPercentage: 50, resetTimeoutMs: 30000 },
  fallbacks: { 'demo/down': [FALLBACK_MODEL] },
  streams: { continuation: { enabled: true, prefillModels: ['demo/cut-continued'], maxContinuations: 1 } },
  server: { drainTimeoutMs: 1000 },
  log: { level: 'silent' },
}

export async function runDemoCli(args: string[], io: DemoIo): Promise<number> {
  let holdS = 0
  try {
    const { values } = parseArgs({ args, strict: true, options: { help: { type: 'boolean' }, 'hold-s': { type: 'string' } } })
    if (values.help) {
      io.stdout(DEMO_HELP)
      return 0
    }
    if (values['hold-s'] !== undefined) {
      holdS = Number(values['hold-s'])
      if (!Number.isFinite(holdS) || holdS < 0) throw new Error(`--hold-s must be a number of seconds ≥ 0, found "${values['hold-s']}"`)
    }
  } catch (err: unknown) {
    io.stderr(`toprouter-proxy demo: ${(err as Error).message}\nRun toprouter-proxy demo --help for usage.\n`)
    return 2
  }
  return runDemo(io, holdS)
}

async function runDemo(io: DemoIo, holdS: number): Promise<number> {
  const startedAt = performance.now()
  const fault = await startFaultUpstream()
  const ports = [fault.port]
  // The app's own connections: a dispatcher of its own (no environment proxy, closed at the end).
  const appAgent = new Agent({ connect: { timeout: SDK_TIMEOUT_MS } })
  let proxy: ProxyApp | undefined
  try {
    proxy = await startDemoProxy(fault.url)
    const proxyPort = portOf(proxy)
    ports.push(proxyPort)
    const proxyUrl = `http://127.0.0.1:${proxyPort}`
    io.stdout(`status page (live while the demo runs): ${proxyUrl}/status\n`)
    io.stdout(`ports opened: ${fault.port} (fake TopRouter), ${proxyPort} (proxy), both on 127.0.0.1\n`)
    io.stdout(
      `the app: the openai SDK, maxRetries ${SDK_MAX_RETRIES}, timeout ${SDK_TIMEOUT_MS / 1000} s, both ways; only its baseURL differs\n\n`,
    )

    const direct = demoClient(fault.url, appAgent)
    const viaProxy = demoClient(proxyUrl, appAgent)
    const rows: Row[] = []
    for (const [index, scenario] of SCENARIOS.entries()) {
      io.stdout(`[${index + 1}/${SCENARIOS.length}] ${scenario.name}: ${scenario.fault}\n`)
      fault.reset()
      const directSeen = await runScenario(direct, scenario, fault)
      fault.reset()
      const proxySeen = await runScenario(viaProxy, scenario, fault)
      const breaker = proxy.breakers.states()[scenario.model]
      rows.push({ name: scenario.name, direct: directSeen, proxy: breaker === 'open' ? `${proxySeen}, its breaker opened` : proxySeen })
    }
    io.stdout(`\n${table(rows)}\n`)
    io.stdout(
      `(an app with the SDK's default maxRetries 2 would retry the 429, the 503s and the reset itself, but gets no fallback, no breaker, no first-event timeout and no error event for a cut stream)\n`,
    )
    if (holdS > 0) {
      io.stdout(`holding for ${holdS} s: ${proxyUrl}/status\n`)
      await new Promise((resolve) => setTimeout(resolve, holdS * 1000))
    }
  } finally {
    await appAgent.close()
    await proxy?.app.close()
    await fault.close()
  }

  const refused = await Promise.all(ports.map(async (port) => ({ port, refused: await connectionRefused(port) })))
  const open = refused.filter((p) => !p.refused)
  io.stdout(
    `\nclosed: ${refused.map((p) => `${p.port} ${p.refused ? 'refuses connections (ECONNREFUSED)' : 'STILL ACCEPTS CONNECTIONS'}`).join(', ')}\n`,
  )
  io.stdout(`done in ${((performance.now() - startedAt) / 1000).toFixed(1)} s\n`)
  return open.length === 0 ? 0 : 1
}

async function startDemoProxy(upstreamUrl: string): Promise<ProxyApp> {
  // JSON is YAML: the config goes through the same loader and validation as a config file.
  const text = JSON.stringify(DEMO_CONFIG)
  const config = loadConfig({
    configPath: 'demo-config.yaml',
    readFile: () => text,
    env: {},
    flags: { host: '127.0.0.1', port: '0', upstream: upstreamUrl },
  })
  const discard = new Writable({ write: (_chunk, _encoding, callback) => callback() })
  const proxy = buildApp(config, { logger: buildLogger(config.log.level, discard) })
  await proxy.app.listen({ host: config.listen.host, port: config.listen.port })
  return proxy
}

function portOf(proxy: ProxyApp): number {
  const address = proxy.app.server.address()
  return typeof address === 'object' && address !== null ? address.port : 0
}

/** The app: the openai SDK, its fetch bound to `agent` so it talks to 127.0.0.1 directly, whatever HTTP_PROXY says. */
function demoClient(baseURL: string, agent: Agent): OpenAI {
  // undici's fetch and the global one differ only in their type declarations.
  const fetch = ((input: string | URL, init?: Parameters<typeof undiciFetch>[1]) =>
    undiciFetch(input, { ...init, dispatcher: agent })) as unknown as NonNullable<ClientOptions['fetch']>
  return new OpenAI({ baseURL, apiKey: 'sk-demo-not-a-real-key', maxRetries: SDK_MAX_RETRIES, timeout: SDK_TIMEOUT_MS, fetch })
}

interface Row {
  readonly name: string
  readonly direct: string
  readonly proxy: string
}

/** What one request looked like from the app: `what` without the time, so repeats can be grouped. */
interface Seen {
  readonly what: string
  readonly seconds: number
}

/** Runs the scenario's requests one after another; describes them with the upstream calls they caused. */
async function runScenario(client: OpenAI, scenario: Scenario, fault: FaultUpstream): Promise<string> {
  const seen: Seen[] = []
  const calls: number[] = []
  for (let i = 0; i < scenario.requests; i++) {
    const before = fault.calls(scenario.model)
    seen.push(await requestOnce(client, scenario))
    calls.push(fault.calls(scenario.model) - before)
  }
  const first = seen[0] as Seen
  if (seen.length === 1) return `${first.what} after ${seconds(first.seconds)} (${plural(calls[0] ?? 0, 'call')})`
  const same = seen.every((s) => s.what === first.what)
  const total = seen.reduce((sum, s) => sum + s.seconds, 0)
  const what = same ? `${seen.length} × ${first.what}` : seen.map((s) => s.what).join('; ')
  return `${what}, ${seconds(total)} in all (${scenario.model} calls: ${calls.join(', ')})`
}

async function requestOnce(client: OpenAI, scenario: Scenario): Promise<Seen> {
  const t0 = performance.now()
  const elapsed = () => (performance.now() - t0) / 1000
  const messages = [{ role: 'user' as const, content: 'Say something.' }]
  if (!scenario.stream) {
    try {
      const answer = await client.chat.completions.create({ model: scenario.model, messages })
      return { what: `200${servedBy(answer.model, scenario)}`, seconds: elapsed() }
    } catch (err: unknown) {
      return { what: describeError(err), seconds: elapsed() }
    }
  }
  let chunks = 0
  let finished = false
  let model = scenario.model
  try {
    const stream = await client.chat.completions.create({ model: scenario.model, messages, stream: true })
    for await (const chunk of stream) {
      model = chunk.model
      if (chunk.choices[0]?.delta?.content) chunks += 1
      if (chunk.choices[0]?.finish_reason) finished = true
    }
  } catch (err: unknown) {
    const error = describeError(err)
    // An error the SDK raised for an SSE error event has no status; anything else is an exception.
    const how = err instanceof OpenAI.APIError && !(err instanceof OpenAI.APIConnectionError) ? 'error event' : 'exception'
    return { what: chunks === 0 ? error : `${plural(chunks, 'chunk')}, then ${how}: ${error}`, seconds: elapsed() }
  }
  if (finished) {
    const continued = chunks > CHUNKS_BEFORE_CUT && scenario.model === 'demo/cut-continued' ? ', continued by the proxy' : ''
    return { what: `whole answer, ${plural(chunks, 'chunk')}${servedBy(model, scenario)}${continued},`, seconds: elapsed() }
  }
  return { what: `${plural(chunks, 'chunk')}, then a silent end (no error, answer cut short)`, seconds: elapsed() }
}

function servedBy(model: string, scenario: Scenario): string {
  return model === scenario.model ? '' : ` from ${model} (fallback)`
}

/** The SDK's error as the app sees it: its class, the status and the error code when there is one. */
function describeError(err: unknown): string {
  if (err instanceof OpenAI.APIConnectionTimeoutError) return 'APIConnectionTimeoutError'
  if (err instanceof OpenAI.APIConnectionError) return `APIConnectionError (${rootCause(err)})`
  if (err instanceof OpenAI.APIError) {
    const code = typeof err.code === 'string' ? ` ${err.code}` : ''
    const status = err.status === undefined ? '' : `${err.status} `
    return `${status}${err.constructor.name}${code}`
  }
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err)
}

/** The innermost cause's code or message: `fetch failed` says less than `UND_ERR_SOCKET`. */
function rootCause(err: Error): string {
  let inner: unknown = err
  while (inner instanceof Error && inner.cause instanceof Error) inner = inner.cause
  const { code, message } = inner as NodeJS.ErrnoException
  return typeof code === 'string' ? code : message
}

function seconds(value: number): string {
  return `${value.toFixed(2)} s`
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`
}

/** The rows side by side, each column as wide as its longest cell. */
function table(rows: readonly Row[]): string {
  const header: Row = { name: 'scenario', direct: 'direct: what the app saw', proxy: 'through the proxy: what the app saw' }
  const all = [header, ...rows]
  const nameWidth = Math.max(...all.map((r) => r.name.length))
  const directWidth = Math.max(...all.map((r) => r.direct.length))
  const line = (r: Row) => `${r.name.padEnd(nameWidth)} | ${r.direct.padEnd(directWidth)} | ${r.proxy}`.trimEnd()
  const rule = `${'-'.repeat(nameWidth)}-|-${'-'.repeat(directWidth)}-|-${'-'.repeat(Math.max(...all.map((r) => r.proxy.length)))}`
  return [line(header), rule, ...rows.map(line)].join('\n')
}

/** True when nothing accepts a connection on 127.0.0.1:`port` any more. */
function connectionRefused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.once('connect', () => {
      socket.destroy()
      resolve(false)
    })
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'))
  })
}
