import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import { completion, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'

const MODEL = 'google/gemini-3.5-flash'
const chatInit = (stream = false) => ({
  method: 'POST' as const,
  headers: { authorization: 'Bearer sk-client', 'content-type': 'application/json' },
  body: JSON.stringify({ model: MODEL, stream, messages: [] }),
})

t.test('requests reuse keep-alive connections to the upstream', async (t) => {
  let connections = 0
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, completion(MODEL)))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  for (let i = 0; i < 10; i++) {
    const res = await request(`${proxy.url}/chat/completions`, chatInit())
    await res.body.dump()
    connections = Math.max(connections, upstream.sockets.size + upstream.closedSockets)
  }
  t.equal(upstream.requests.length, 10)
  t.equal(connections, 1, '10 sequential requests used one upstream connection')
})

const hasOpenssl = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
})()

t.test(
  'an upstream TLS certificate that is not trusted is refused: 502, nothing sent',
  { skip: hasOpenssl ? false : 'openssl is not installed, so no self-signed certificate can be made (apt-get install openssl)' },
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'toprouter-tls-'))
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-keyout',
        join(dir, 'key.pem'),
        '-out',
        join(dir, 'cert.pem'),
        '-days',
        '1',
        '-subj',
        '/CN=127.0.0.1',
      ],
      { stdio: 'ignore' },
    )
    let received = 0
    const server = createHttpsServer(
      { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) },
      (_req, res) => {
        received += 1
        sendJson(res, 200, completion(MODEL))
      },
    )
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
    const proxy = await startProxy(t, { upstreamUrl: `https://127.0.0.1:${(server.address() as AddressInfo).port}` })
    const res = await request(`${proxy.url}/chat/completions`, chatInit())
    const error = await expectErrorShape(t, res, { status: 502, code: 'upstream_unreachable' })
    t.match(error.message, /certificate/i)
    t.equal(received, 0, 'no request was sent over the untrusted connection')
  },
)

t.test('a client that stops reading a stream pushes back on the upstream instead of filling memory', async (t) => {
  const chunk = `data: ${JSON.stringify({ choices: [{ delta: { content: 'x'.repeat(16 * 1024) } }] })}\n\n`
  let bytesWritten = 0
  let finished = false
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    for (let i = 0; i < 4000 && !res.destroyed; i++) {
      bytesWritten += chunk.length
      if (!res.write(chunk)) await new Promise((resolve) => res.once('drain', resolve).once('close', resolve))
    }
    finished = true
    res.end('data: [DONE]\n\n')
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const res = await request(`${proxy.url}/chat/completions`, chatInit(true))
  t.equal(res.statusCode, 200)
  await sleep(1000) // the client reads nothing
  const total = 4000 * chunk.length
  t.notOk(finished, 'the upstream could not finish writing')
  t.ok(
    bytesWritten < total / 4,
    `the upstream wrote ${(bytesWritten / 1e6).toFixed(1)} MB of ${(total / 1e6).toFixed(0)} MB while the client was not reading`,
  )
  let read = 0
  for await (const part of res.body) read += part.length
  t.equal(read, total + 'data: [DONE]\n\n'.length, 'once the client reads, everything arrives')
})

t.test('one log line per request with request id, route, model, status, attempts and upstream latency', async (t) => {
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    await sleep(30)
    sendJson(res, 429, { error: { message: 'slow down', type: 'rate_limit_error', code: 'rate_limit_exceeded' } })
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const res = await request(`${proxy.url}/v1/chat/completions`, {
    ...chatInit(),
    headers: { ...chatInit().headers, 'x-request-id': 'trace-me-1' },
  })
  await res.body.dump()
  const health = await request(`${proxy.url}/healthz`)
  await health.body.dump()
  const lines = proxy.logLines().filter((line) => line.msg === 'request')
  t.equal(lines.length, 2, 'one line per request')
  const line = lines[0] ?? {}
  t.equal(line.reqId, 'trace-me-1')
  t.equal(line.route, '/v1/chat/completions')
  t.equal(line.model, MODEL)
  t.equal(line.status, 429)
  t.equal(line.upstreamStatus, 429)
  t.equal(line.attempts, 3, 'the 429 was retried up to retry.maxAttempts')
  t.ok(typeof line.upstreamMs === 'number' && line.upstreamMs >= 25, `upstreamMs ${String(line.upstreamMs)}`)
  t.equal(lines[1]?.route, '/healthz')
  t.equal(lines[1]?.attempts, 0, '/healthz never touches the upstream')
  t.equal(upstream.requests.length, 3)
})
