import { connect } from 'node:net'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import { completion, sendJson, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'

const MODEL = 'google/gemini-3.5-flash'
const auth = { authorization: 'Bearer sk-client' }

async function stillServes(t: Test, url: string) {
  const res = await request(`${url}/chat/completions`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [] }),
  })
  t.equal(res.statusCode, 200, 'the proxy keeps serving afterwards')
  await res.body.dump()
}

function rawExchange(url: string, payload: string): Promise<string> {
  const { port } = new URL(url)
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), '127.0.0.1')
    let received = ''
    socket.on('data', (chunk) => (received += chunk.toString()))
    socket.on('end', () => resolve(received))
    socket.on('close', () => resolve(received))
    socket.on('error', reject)
    socket.write(payload)
  })
}

t.test('requests the proxy refuses get the error shape, nothing reaches the upstream, and serving goes on', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, completion(MODEL)))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { server: { bodyLimitBytes: 4096 } } })
  const post = (path: string, body: string | Buffer, headers: Record<string, string> = { 'content-type': 'application/json' }) =>
    request(`${proxy.url}${path}`, { method: 'POST', headers: { ...auth, ...headers }, body })

  const cases = [
    {
      name: 'unknown route',
      send: () => request(`${proxy.url}/v2/engines`, { headers: auth }),
      expected: { status: 404, type: 'not_found_error', code: 'route_not_found' },
    },
    {
      name: 'the legacy completions route is not proxied',
      send: () => post('/completions', '{}'),
      expected: { status: 404, code: 'route_not_found' },
    },
    {
      name: 'path traversal',
      send: () => request(`${proxy.url}/v1/../../etc/passwd`, { headers: auth }),
      expected: { status: 404, code: 'route_not_found' },
    },
    {
      name: 'an absolute URL is not an open proxy',
      send: () => rawExchange(proxy.url, 'GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n'),
      raw: /^HTTP\/1\.1 404/,
    },
    {
      name: 'GET on chat completions',
      send: () => request(`${proxy.url}/chat/completions`, { headers: auth }),
      expected: { status: 405, type: 'invalid_request_error', code: 'method_not_allowed' },
      allow: 'POST',
    },
    {
      name: 'DELETE on models',
      send: () => request(`${proxy.url}/v1/models`, { method: 'DELETE', headers: auth }),
      expected: { status: 405, code: 'method_not_allowed' },
      allow: 'GET, HEAD',
    },
    {
      name: 'malformed JSON',
      send: () => post('/chat/completions', '{"model": "x", '),
      expected: { status: 400, type: 'invalid_request_error', code: 'invalid_json' },
    },
    { name: 'an empty JSON body', send: () => post('/chat/completions', ''), expected: { status: 400, code: 'invalid_json' } },
    { name: 'a JSON array', send: () => post('/chat/completions', '[1,2]'), expected: { status: 400, code: 'invalid_request' } },
    {
      name: 'no model',
      send: () => post('/chat/completions', '{"messages":[]}'),
      expected: { status: 400, code: 'invalid_request', message: /model/ },
    },
    {
      name: 'a non-boolean stream',
      send: () => post('/chat/completions', '{"model":"m","stream":"yes"}'),
      expected: { status: 400, code: 'invalid_request', message: /stream/ },
    },
    {
      name: 'a body over the limit',
      send: () => post('/chat/completions', JSON.stringify({ model: MODEL, pad: 'x'.repeat(5000) })),
      expected: { status: 413, type: 'invalid_request_error', code: 'request_too_large' },
    },
    {
      name: 'a chunked body over the limit',
      send: () =>
        request(`${proxy.url}/chat/completions`, {
          method: 'POST',
          headers: { ...auth, 'content-type': 'application/json' },
          body: Readable.from([Buffer.from('{"model":"m","pad":"'), Buffer.alloc(5000, 120), Buffer.from('"}')]),
        }),
      expected: { status: 413, code: 'request_too_large' },
    },
    {
      name: 'text/plain',
      send: () => post('/chat/completions', 'hello', { 'content-type': 'text/plain' }),
      expected: { status: 415, type: 'invalid_request_error', code: 'unsupported_media_type' },
    },
    {
      name: 'form encoding',
      send: () => post('/chat/completions', 'model=x', { 'content-type': 'application/x-www-form-urlencoded' }),
      expected: { status: 415, code: 'unsupported_media_type' },
    },
    {
      name: 'a header with a control character',
      send: () => rawExchange(proxy.url, 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n'),
      raw: /^HTTP\/1\.1 400[\s\S]*"code":"invalid_request"/,
    },
    {
      name: 'headers too large',
      send: () => rawExchange(proxy.url, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n`),
      raw: /^HTTP\/1\.1 431[\s\S]*"code":"headers_too_large"/,
    },
    {
      name: 'garbage instead of HTTP',
      send: () => rawExchange(proxy.url, 'HELLO THERE\r\n\r\n'),
      raw: /^HTTP\/1\.1 400[\s\S]*application\/json[\s\S]*"type":"invalid_request_error"/,
    },
  ]
  for (const c of cases) {
    await t.test(c.name, async (t) => {
      const result = await c.send()
      if (typeof result === 'string') {
        t.match(result, c.raw as RegExp)
        t.notMatch(result, /<html|statusCode/i, "never Fastify's or Node's default body")
      } else {
        await expectErrorShape(t, result, c.expected as { status: number })
        if (c.allow !== undefined) t.equal(result.headers.allow, c.allow, 'Allow header names the methods')
      }
    })
  }
  t.equal(upstream.requests.length, 0, 'no refused request reached the upstream')
  await stillServes(t, proxy.url)
})

// Found by the front-door fuzz (test/front-door-fuzz.test.ts); each pinned here by name.

t.test('a malformed percent-escape in the path gets the error shape, not Fastify’s own body', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, completion(MODEL)))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  for (const path of ['/models/%zz', '/chat/completions%E0%A4%A']) {
    const res = await request(`${proxy.url}${path}`, { headers: auth })
    await expectErrorShape(t, res, { status: 400, type: 'invalid_request_error', code: 'invalid_request' })
    t.ok(res.headers['x-request-id'], `${path}: x-request-id`)
  }
  t.equal(upstream.requests.length, 0, 'nothing reached the upstream')
  await stillServes(t, proxy.url)
})

t.test('a model id that is not a valid header value is served, x-proxy-model percent-encoded', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res, recorded) => {
    const { model } = JSON.parse(recorded.body.toString('utf8')) as { model: string }
    sendJson(res, 200, completion(model))
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  for (const model of ['模型', 'a\u0000b', 'bad\ud800id']) {
    const res = await request(`${proxy.url}/chat/completions`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [] }),
    })
    t.equal(res.statusCode, 200, `${JSON.stringify(model)}: served`)
    t.equal(res.headers['x-proxy-model'], encodeURIComponent(model.replace(/[\ud800-\udfff]/g, '\ufffd')), 'percent-encoded UTF-8')
    await res.body.dump()
  }
  t.notMatch(proxy.logText(), /unexpected error/)
})

t.test('a body nested too deeply to rewrite, with request fallbacks: 400 before anything is sent', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, completion(MODEL)))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const deep = `${'['.repeat(20000)}${']'.repeat(20000)}`
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json' },
    body: `{"model":"${MODEL}","fallbacks":["b/backup"],"messages":[],"extra":${deep}}`,
  })
  const error = await expectErrorShape(t, res, { status: 400, code: 'invalid_request' })
  t.match(error.message, /nested too deeply/)
  t.equal(upstream.requests.length, 0, 'nothing reached the upstream')
  t.notMatch(proxy.logText(), /unexpected error/)
})

t.test('what HTTP says to refuse is refused in the error shape: Host, Expect, CONNECT, a #fragment', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, completion(MODEL)))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const body = JSON.stringify({ model: MODEL, messages: [] })
  const chatHead = (target: string, extra: string) =>
    `POST ${target} HTTP/1.1\r\n${extra}Authorization: Bearer sk-client\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`
  const cases: ReadonlyArray<readonly [string, string, number, string]> = [
    ['no Host in HTTP/1.1', chatHead('/chat/completions', ''), 400, 'invalid_request'],
    ['two Host headers', chatHead('/chat/completions', 'Host: a\r\nHost: b\r\n'), 400, 'invalid_request'],
    ['Expect other than 100-continue', chatHead('/chat/completions', 'Host: a\r\nExpect: 200-ok\r\n'), 417, 'expectation_failed'],
    ['a #fragment that looks like a query', chatHead('/chat/completions#?x=1', 'Host: a\r\n'), 400, 'invalid_request'],
    ['CONNECT', 'CONNECT /chat/completions HTTP/1.1\r\nHost: a\r\n\r\n', 405, 'method_not_allowed'],
  ]
  for (const [name, payload, status, code] of cases) {
    const answer = await rawExchange(proxy.url, payload)
    const [head = '', text = ''] = answer.split('\r\n\r\n')
    t.match(head, new RegExp(`^HTTP/1\\.1 ${status} `), `${name}: ${status}`)
    t.match(head, /x-should-retry: false/i, `${name}: x-should-retry`)
    t.match(head, /x-request-id: \S+/i, `${name}: x-request-id`)
    const chunked = /transfer-encoding: chunked/i.test(head)
    const json = chunked ? (text.split('\r\n')[1] ?? '') : text
    t.equal((JSON.parse(json) as { error: { code: string } }).error.code, code, `${name}: ${code}`)
  }
  t.equal(upstream.requests.length, 0, 'none of them reached the upstream')
  await stillServes(t, proxy.url)
})
