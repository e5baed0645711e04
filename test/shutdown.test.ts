import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
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

t.test('SIGTERM: a stream longer than drainTimeoutMs is cut at the timeout and the exit code is still 0', async (t) => {
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    for (let i = 0; i < 100; i++) {
      if (res.destroyed) return
      res.write(chunkEvent(MODEL, i, 'x'))
      await sleep(100)
    }
    res.end()
  })
  const proxy = await startCli(t, upstream.url, 400)
  const stream = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, stream: true, messages: [] }),
  })
  const exited = once(proxy.child, 'exit')
  const signalledAt = performance.now()
  proxy.child.kill('SIGTERM')
  await stream.body.text().catch(() => '')
  const [code] = (await exited) as [number | null]
  const tookMs = performance.now() - signalledAt
  t.equal(code, 0)
  t.ok(tookMs >= 350 && tookMs < 3000, `exited after the drain timeout (${Math.round(tookMs)} ms)`)
})

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
