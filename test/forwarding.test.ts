import { request as httpRequest } from 'node:http'
import t from 'tap'
import { request } from 'undici'
import { chunkEvent, completion, sendJson, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'

const MODEL = 'google/gemini-3.5-flash'
const auth = { authorization: 'Bearer sk-client-key' }

t.test('a non-streaming completion is forwarded and its body comes back byte-identical', async (t) => {
  const upstreamBody = `${JSON.stringify(completion(MODEL))}\n`
  const upstream = await startFakeUpstream(t, (_req, res) => {
    res.writeHead(200, {
      'content-type': 'application/json',
      'x-ratelimit-limit-requests': '100',
      'x-ratelimit-remaining-requests': '99',
      'x-ratelimit-reset-requests': '1m30s',
      'x-ratelimit-reset-tokens': '250ms',
      'retry-after': '3',
      'keep-alive': 'timeout=5',
      connection: 'keep-alive, x-hop-secret',
      'x-hop-secret': 'should-not-pass',
    })
    res.end(upstreamBody)
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const requestBody = `{"model":"${MODEL}",  "messages":[{"role":"user","content":"hi"}]}`
  const res = await request(`${proxy.url}/chat/completions?trace=1&x=a%20b`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json', 'x-custom': 'kept', 'proxy-authorization': 'Basic c2VjcmV0', te: 'trailers' },
    body: requestBody,
  })
  t.equal(res.statusCode, 200)
  t.equal(await res.body.text(), upstreamBody, 'success body is byte-identical')
  t.equal(res.headers['x-ratelimit-limit-requests'], '100')
  t.equal(res.headers['x-ratelimit-remaining-requests'], '99')
  t.equal(res.headers['x-ratelimit-reset-requests'], '1m30s')
  t.equal(res.headers['x-ratelimit-reset-tokens'], '250ms')
  t.equal(res.headers['retry-after'], '3')
  t.equal(res.headers['x-hop-secret'], undefined, 'a header named by Connection is stripped')
  t.not(res.headers['keep-alive'], 'timeout=5', "the upstream's keep-alive is hop-by-hop; only the proxy's own applies")
  t.equal(res.headers['x-proxy-attempts'], '1')
  t.match(res.headers['x-request-id'], /^[0-9a-f-]{36}$/)

  t.equal(upstream.requests.length, 1)
  const seen = upstream.requests[0]!
  t.equal(seen.method, 'POST')
  t.equal(seen.url, '/chat/completions?trace=1&x=a%20b', 'path and query string kept')
  t.equal(seen.body.toString(), requestBody, 'the client body is forwarded byte for byte')
  t.equal(seen.headers.authorization, 'Bearer sk-client-key', 'without a configured key the client key is forwarded')
  t.equal(seen.headers['x-custom'], 'kept')
  t.equal(seen.headers['proxy-authorization'], undefined)
  t.equal(seen.headers.te, undefined)
  t.equal(seen.headers['accept-encoding'], 'identity')
  t.equal(seen.headers['x-request-id'], res.headers['x-request-id'], 'the request id travels upstream')
})

t.test('/v1/chat/completions reaches the same upstream path', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, completion(MODEL)))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const res = await request(`${proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json', 'x-request-id': 'client-chosen-id.42' },
    body: JSON.stringify({ model: MODEL, messages: [] }),
  })
  t.equal(res.statusCode, 200)
  await res.body.dump()
  t.equal(upstream.requests[0]?.url, '/chat/completions')
  t.equal(res.headers['x-request-id'], 'client-chosen-id.42', 'a sane client request id is kept')
})

t.test('an insane client request id is replaced', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, completion(MODEL)))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const res = await request(`${proxy.url}/healthz`, { headers: { 'x-request-id': `a b<script>${'x'.repeat(300)}` } })
  await res.body.dump()
  t.match(res.headers['x-request-id'], /^[0-9a-f-]{36}$/)
})

t.test('a base URL with a path prefix is honoured', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, completion(MODEL)))
  const proxy = await startProxy(t, { upstreamUrl: `${upstream.url}/api/` })
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [] }),
  })
  await res.body.dump()
  t.equal(upstream.requests[0]?.url, '/api/chat/completions')
})

t.test('a stream is forwarded event by event as it arrives, not buffered', async (t) => {
  const events = [chunkEvent(MODEL, 0, 'Hel'), chunkEvent(MODEL, 1, 'lo'), chunkEvent(MODEL, 2, '!', 'stop')]
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => (release = resolve))
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'x-ratelimit-remaining-tokens': '1000' })
    res.write(events[0])
    await gate // the rest only comes after the client has seen the first event
    res.write(events[1])
    res.write(events[2])
    res.end('data: [DONE]\n\n')
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, stream: true, messages: [] }),
  })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/event-stream/)
  t.equal(res.headers['x-ratelimit-remaining-tokens'], '1000')
  t.equal(res.headers['content-length'], undefined)
  const received: string[] = []
  for await (const chunk of res.body) {
    received.push(chunk.toString())
    if (received.length === 1) {
      t.equal(received[0], events[0], 'the first event arrives before the upstream sends the second')
      release()
    }
  }
  t.equal(received.join(''), `${events.join('')}data: [DONE]\n\n`, 'the whole stream is byte-identical')
})

t.test('GET /models and /v1/models forward to {baseUrl}/models with the query string', async (t) => {
  const list = JSON.stringify({
    object: 'list',
    data: [
      { id: MODEL, object: 'model' },
      { id: 'anthropic/claude-4.6-sonnet', object: 'model' },
    ],
  })
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, list, { 'x-ratelimit-remaining-requests': '7' }))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  for (const path of ['/models?supported_parameters=tools', '/v1/models']) {
    const res = await request(`${proxy.url}${path}`, { headers: auth })
    t.equal(res.statusCode, 200)
    t.equal(await res.body.text(), list, `${path}: byte-identical`)
    t.equal(res.headers['x-ratelimit-remaining-requests'], '7')
  }
  t.equal(upstream.requests[0]?.url, '/models?supported_parameters=tools')
  t.equal(upstream.requests[1]?.url, '/models')
})

t.test('GET /models/:id finds ids containing a slash, and 404s an absent one', async (t) => {
  const list = { object: 'list', data: [{ id: MODEL, object: 'model', context_length: 1000000 }] }
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, list))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  for (const path of [`/models/${MODEL}`, `/v1/models/${encodeURIComponent(MODEL)}`]) {
    const res = await request(`${proxy.url}${path}`, { headers: auth })
    t.equal(res.statusCode, 200, path)
    t.same(await res.body.json(), list.data[0])
  }
  const missing = await request(`${proxy.url}/v1/models/openai/gpt-nope`, { headers: auth })
  t.equal(missing.statusCode, 404)
  t.same(await missing.body.json(), {
    error: { message: 'Model not found: openai/gpt-nope', type: 'not_found_error', code: 'model_not_found' },
  })
})

t.test("headers the client's Connection header names are not forwarded", async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, completion(MODEL)))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  // undici refuses custom Connection values, so this uses node:http, which sends them as given.
  const status = await new Promise<number>((resolve, reject) => {
    const req = httpRequest(`${proxy.url}/chat/completions`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json', connection: 'keep-alive, x-drop-me', 'x-drop-me': '1', 'x-keep-me': '1' },
    })
    req.on('response', (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.on('error', reject)
    req.end(JSON.stringify({ model: MODEL, messages: [] }))
  })
  t.equal(status, 200)
  t.equal(upstream.requests[0]?.headers['x-drop-me'], undefined)
  t.equal(upstream.requests[0]?.headers['x-keep-me'], '1')
})
