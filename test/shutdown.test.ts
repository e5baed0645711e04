import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, writeFileSync } from 'node:fs'
import type { ServerResponse } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import OpenAI from 'openai'
import t, { type Test } from 'tap'
import { Agent, request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import { chunkEvent, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'

const MODEL = 'google/gemini-3.5-flash'

interface RunningProxy {
  readonly child: ChildProcess
  readonly url: string
  readonly output: () => string
}

/** Starts the real CLI in a child process and waits for its startup line. */
async function startCli(t: Test, upstreamUrl: string, drainTimeoutMs: number): Promise<RunningProxy> {
  const dir = mkdtempSync(join(tmpdir(), 'toprouter-drain-'))
  const configPath = join(dir, 'config.yaml')
  writeFileSync(configPath, `server:\n  drainTimeoutMs: ${drainTimeoutMs}\n`)
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', 'src/main.ts', '--port', '0', '--upstream', upstreamUrl, '--config', configPath],
    {
      cwd: new URL('..', import.meta.url),
      env: { PATH: process.env.PATH ?? '', TOPROUTER_API_KEY: 'sk-drain-test-key' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  let output = ''
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()))
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()))
  const deadline = Date.now() + 15000
  while (Date.now() < deadline) {
    const match = /listening on 127\.0\.0\.1:(\d+)/.exec(output)
    if (match) return { child, url: `http://127.0.0.1:${match[1]}`, output: () => output }
    if (child.exitCode !== null) break
    await sleep(50)
  }
  throw new Error(`the proxy did not start:\n${output}`)
}

t.test('startup line tells where it listens and which base_url to use', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => res.end())
  const proxy = await startCli(t, upstream.url, 1000)
  const line = proxy
    .output()
    .split('\n')
    .find((l) => l.includes('listening on'))
  t.ok(line)
  const parsed = JSON.parse(line ?? '{}') as { msg: string; upstream: string }
  t.match(parsed.msg, new RegExp(`use base_url ${proxy.url.replace(/\./g, '\\.')} in your OpenAI SDK`))
  t.equal(parsed.upstream, upstream.url)
  t.notMatch(proxy.output(), /sk-drain-test-key/)
  proxy.child.kill('SIGTERM')
  const [code] = (await once(proxy.child, 'exit')) as [number | null]
  t.equal(code, 0)
})

t.test('SIGTERM: new connections are refused, an open stream completes, exit 0', async (t) => {
  const events = Array.from({ length: 6 }, (_, i) => chunkEvent(MODEL, i, `part${i}`, i === 5 ? 'stop' : null))
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    for (const event of events) {
      res.write(event)
      await sleep(150)
    }
    res.end('data: [DONE]\n\n')
  })
  const proxy = await startCli(t, upstream.url, 10000)
  const agent = new Agent({ connections: 1, pipelining: 0 })
  t.teardown(() => agent.close())
  const ready = await request(`${proxy.url}/readyz`, { dispatcher: agent })
  t.equal(ready.statusCode, 200)
  await ready.body.dump()

  const stream = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, stream: true, messages: [] }),
  })
  t.equal(stream.statusCode, 200)
  let received = ''
  const exited = once(proxy.child, 'exit')
  for await (const chunk of stream.body) {
    if (received === '') {
      proxy.child.kill('SIGTERM')
      await sleep(100)
      const refused = await request(`${proxy.url}/healthz`).then(
        () => false,
        (err: { code?: string }) => err.code === 'ECONNREFUSED',
      )
      t.ok(refused, 'a new connection is refused while draining')
    }
    received += chunk.toString()
  }
  t.equal(received, `${events.join('')}data: [DONE]\n\n`, 'the open stream finished whole')
  const [code] = (await exited) as [number | null]
  t.equal(code, 0, 'exit code 0')
  t.match(proxy.output(), /draining/)
})

/** The drain timeout of the tests below that outlast it: short, and long enough to tell apart. */
const DRAIN_MS = 500
/** How long after the drain timeout the process may take to write its last answers and exit. */
const EXIT_SLACK_MS = 700

/** The CLI's stdout JSON log lines (anything else it printed is skipped). */
function logLines(proxy: RunningProxy): Array<Record<string, unknown>> {
  return proxy
    .output()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
}

/** Splits an SSE body into its events, each with its blank line; a partial last event is kept. */
function sseEvents(text: string): string[] {
  return text.split(/(?<=\n\n)/).filter((event) => event !== '')
}

/** Resolves once the fake upstream has received `count` requests (the proxy's request is in flight). */
async function upstreamReceived(upstream: { requests: unknown[] }, count = 1): Promise<void> {
  const deadline = performance.now() + 5000
  while (upstream.requests.length < count) {
    if (performance.now() > deadline) throw new Error('the upstream never received the request')
    await sleep(10)
  }
}

/** Resolves when the upstream's response closes, with whether it had been finished (false: the proxy hung up). */
const upstreamClosed = (res: ServerResponse) =>
  new Promise<boolean>((resolve) =>
    res.destroyed ? resolve(res.writableFinished) : res.once('close', () => resolve(res.writableFinished)),
  )

/** The `drained, exiting` line the CLI logs last. */
function drainedLine(t: Test, proxy: RunningProxy): Record<string, unknown> {
  const line = logLines(proxy).find((l) => l.msg === 'drained, exiting')
  t.ok(line, 'the CLI logged "drained, exiting"')
  return line ?? {}
}

function chatBody(stream: boolean): string {
  return JSON.stringify({ model: MODEL, stream, messages: [{ role: 'user', content: 'hi' }] })
}

t.test(
  'SIGTERM: a stream longer than drainTimeoutMs gets every event sent before the timeout, then one service_unavailable error event; exit 0 at the timeout',
  async (t) => {
    const sent: Array<{ event: string; atMs: number }> = []
    const upstream = await startFakeUpstream(t, async (_req, res) => {
      res.socket?.setNoDelay(true)
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      for (let i = 0; i < 100 && !res.destroyed; i++) {
        const event = chunkEvent(MODEL, i, `x${i}`)
        res.write(event)
        sent.push({ event, atMs: performance.now() })
        await sleep(100)
      }
      res.end()
    })
    const proxy = await startCli(t, upstream.url, DRAIN_MS)
    const stream = await request(`${proxy.url}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: chatBody(true),
    })
    t.equal(stream.statusCode, 200)
    t.match(stream.headers['content-type'], /^text\/event-stream/)
    const exited = once(proxy.child, 'exit')
    let signalledAt = 0
    let errorArrivedAt = 0
    let received = ''
    for await (const chunk of stream.body) {
      if (signalledAt === 0) {
        signalledAt = performance.now()
        proxy.child.kill('SIGTERM')
      }
      received += (chunk as Buffer).toString()
      if (errorArrivedAt === 0 && received.includes('{"error":')) errorArrivedAt = performance.now()
    }
    const [code] = (await exited) as [number | null]
    const exitedAfterMs = performance.now() - signalledAt
    t.equal(code, 0, 'exit code 0')

    const events = sseEvents(received)
    const last = events.at(-1) ?? ''
    const relayed = events.slice(0, -1)
    t.ok(relayed.length >= 2, `events were relayed before the cut (${relayed.length})`)
    t.same(
      relayed,
      sent.slice(0, relayed.length).map((s) => s.event),
      "the relayed events are the upstream's, in order, byte for byte",
    )
    const lateCutoff = errorArrivedAt - 50
    const missed = sent.slice(relayed.length).filter((s) => s.atMs < lateCutoff)
    t.same(missed, [], 'every event the upstream sent before the timeout reached the client')
    t.match(last, /^data: \{"error":[^\n]*\}\n\n$/, 'the last event is an error event')
    const parsed = JSON.parse(last.slice('data: '.length)) as { error: Record<string, unknown> }
    t.same(Object.keys(parsed), ['error'])
    t.same(Object.keys(parsed.error).sort(), ['code', 'message', 'type'])
    t.equal(parsed.error.type, 'server_error')
    t.equal(parsed.error.code, 'service_unavailable')
    t.equal(typeof parsed.error.message, 'string')
    t.equal(received.split('{"error":').length - 1, 1, 'exactly one error event')

    const errorAfterMs = errorArrivedAt - signalledAt
    t.ok(
      errorAfterMs >= DRAIN_MS - 10 && errorAfterMs < DRAIN_MS + EXIT_SLACK_MS,
      `the error event came at the drain timeout (${Math.round(errorAfterMs)} ms)`,
    )
    t.ok(
      exitedAfterMs >= DRAIN_MS && exitedAfterMs < DRAIN_MS + EXIT_SLACK_MS,
      `exited at the drain timeout (${Math.round(exitedAfterMs)} ms after SIGTERM)`,
    )

    const endedLine = logLines(proxy).find((l) => l.msg === 'stream ended with an error event')
    t.ok(endedLine, 'the proxy logged "stream ended with an error event"')
    t.equal(endedLine?.ending, 'drained')
    t.equal(endedLine?.model, MODEL)
    t.match(drainedLine(t, proxy), { cut: true, interruptedStreams: 1, interruptedRequests: 0 })
  },
)

t.test(
  'SIGTERM: a non-streaming request whose upstream never answers gets 503 service_unavailable at the drain timeout; exit 0',
  async (t) => {
    let upstreamHungUp: Promise<boolean> = Promise.resolve(true)
    const upstream = await startFakeUpstream(t, (_req, res) => {
      upstreamHungUp = upstreamClosed(res)
      return upstreamHungUp
    })
    const proxy = await startCli(t, upstream.url, DRAIN_MS)
    const answer = request(`${proxy.url}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: chatBody(false),
    })
    await upstreamReceived(upstream)
    const exited = once(proxy.child, 'exit')
    const signalledAt = performance.now()
    proxy.child.kill('SIGTERM')
    const res = await answer
    const answeredAfterMs = performance.now() - signalledAt
    await expectErrorShape(t, res, { status: 503, type: 'server_error', code: 'service_unavailable' })
    const [code] = (await exited) as [number | null]
    const exitedAfterMs = performance.now() - signalledAt
    t.equal(code, 0, 'exit code 0')
    t.ok(
      answeredAfterMs >= DRAIN_MS - 10 && answeredAfterMs < DRAIN_MS + EXIT_SLACK_MS,
      `answered at the drain timeout (${Math.round(answeredAfterMs)} ms)`,
    )
    t.ok(
      exitedAfterMs >= DRAIN_MS && exitedAfterMs < DRAIN_MS + EXIT_SLACK_MS,
      `exited at the drain timeout (${Math.round(exitedAfterMs)} ms after SIGTERM)`,
    )
    t.equal(await upstreamHungUp, false, 'the upstream request was abandoned, not awaited')
    t.equal(upstream.requests.length, 1, 'not retried')
    const requestLine = logLines(proxy).find((l) => l.msg === 'request' && l.route === '/chat/completions')
    t.match(requestLine, { status: 503, attempts: 1 }, 'the request log line says 503')
    t.equal(requestLine?.upstreamStatus, undefined, 'no upstream status: it never answered')
    t.match(drainedLine(t, proxy), { cut: true, interruptedRequests: 1, interruptedStreams: 0 })
  },
)

t.test('SIGTERM: a stream whose upstream sent headers but no event yet is not committed: 503 service_unavailable; exit 0', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.flushHeaders()
    return upstreamClosed(res)
  })
  const proxy = await startCli(t, upstream.url, DRAIN_MS)
  const answer = request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: chatBody(true),
  })
  await upstreamReceived(upstream)
  await sleep(50) // the upstream's headers have reached the proxy; it waits for the first event
  const exited = once(proxy.child, 'exit')
  const signalledAt = performance.now()
  proxy.child.kill('SIGTERM')
  const res = await answer
  const answeredAfterMs = performance.now() - signalledAt
  t.notMatch(String(res.headers['content-type']), /event-stream/, "the upstream's stream headers were held back")
  await expectErrorShape(t, res, { status: 503, type: 'server_error', code: 'service_unavailable' })
  const [code] = (await exited) as [number | null]
  t.equal(code, 0, 'exit code 0')
  t.ok(
    answeredAfterMs >= DRAIN_MS - 10 && answeredAfterMs < DRAIN_MS + EXIT_SLACK_MS,
    `answered at the drain timeout (${Math.round(answeredAfterMs)} ms)`,
  )
  t.equal(upstream.requests.length, 1, 'not retried')
  const requestLine = logLines(proxy).find((l) => l.msg === 'request' && l.route === '/chat/completions')
  t.match(
    requestLine,
    { status: 503, upstreamStatus: 200 },
    "the upstream's 200 headers had arrived: the proxy was waiting for the first event",
  )
  t.match(drainedLine(t, proxy), { cut: true, interruptedRequests: 1, interruptedStreams: 0 })
})

t.test(
  'SIGTERM: the openai SDK iterating a stream with for await gets an APIError service_unavailable, not a hang or a silent end',
  async (t) => {
    const upstream = await startFakeUpstream(t, async (_req, res) => {
      res.socket?.setNoDelay(true)
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      for (let i = 0; i < 100 && !res.destroyed; i++) {
        res.write(chunkEvent(MODEL, i, 'x'))
        await sleep(100)
      }
      res.end()
    })
    const proxy = await startCli(t, upstream.url, DRAIN_MS)
    const client = new OpenAI({ baseURL: proxy.url, apiKey: 'sk-test', maxRetries: 0 })
    const stream = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], stream: true })
    const exited = once(proxy.child, 'exit')
    let signalledAt = 0
    let content = ''
    let thrown: unknown
    try {
      for await (const chunk of stream) {
        if (signalledAt === 0) {
          signalledAt = performance.now()
          proxy.child.kill('SIGTERM')
        }
        content += chunk.choices[0]?.delta.content ?? ''
      }
    } catch (err: unknown) {
      thrown = err
    }
    const endedAfterMs = performance.now() - signalledAt
    t.match(content, /^x{2,}$/, `the deltas before the timeout arrived (${content.length})`)
    t.type(thrown, OpenAI.APIError, 'for await raises an APIError')
    if (thrown instanceof OpenAI.APIError) {
      t.equal(thrown.code, 'service_unavailable')
      t.equal(thrown.type, 'server_error')
      t.match(thrown.message, /shutting down/)
    }
    t.ok(
      endedAfterMs >= DRAIN_MS - 10 && endedAfterMs < DRAIN_MS + EXIT_SLACK_MS,
      `the iteration ended at the drain timeout (${Math.round(endedAfterMs)} ms)`,
    )
    const [code] = (await exited) as [number | null]
    t.equal(code, 0, 'exit code 0')
    t.equal(logLines(proxy).find((l) => l.msg === 'stream ended with an error event')?.ending, 'drained', 'logged as drained')
  },
)

t.test('while draining, /readyz is 503 and new requests on open connections get 503 service_unavailable', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => res.end())
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const ready = await request(`${proxy.url}/readyz`)
  t.same(await ready.body.json(), { status: 'ready', breakers: {} })
  proxy.lifecycle.draining = true
  await expectErrorShape(t, await request(`${proxy.url}/readyz`), { status: 503, type: 'server_error', code: 'service_unavailable' })
  const chat = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: '{}',
  })
  t.equal(chat.headers.connection, 'close', 'the connection is closed after the answer')
  await expectErrorShape(t, chat, { status: 503, code: 'service_unavailable' })
  const health = await request(`${proxy.url}/healthz`)
  t.equal(health.statusCode, 200, 'liveness stays 200 while draining')
  await health.body.dump()
  t.equal(upstream.requests.length, 0)
})
