import OpenAI from 'openai'
import t from 'tap'
import { request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import { chunkEvent, completion, sendJson, sendSse, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'

const MODEL = 'google/gemini-3.5-flash'
const body = JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] })

t.test('with TOPROUTER_API_KEY set, the configured key replaces whatever the client sent', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, completion(MODEL)))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, env: { TOPROUTER_API_KEY: 'sk-team-real-key-123456' } })
  const headers = [
    { authorization: 'Bearer dummy', 'x-api-key': 'also-dummy', 'content-type': 'application/json' },
    { 'content-type': 'application/json' },
  ]
  for (const h of headers) {
    const res = await request(`${proxy.url}/chat/completions`, { method: 'POST', headers: h, body })
    t.equal(res.statusCode, 200)
    await res.body.dump()
  }
  t.equal(upstream.requests.length, 2)
  for (const seen of upstream.requests) {
    t.equal(seen.headers.authorization, 'Bearer sk-team-real-key-123456')
    t.equal(seen.headers['x-api-key'], undefined, "the client's dummy x-api-key is not forwarded")
  }
})

t.test('without a configured key the client key is forwarded as is; no key at all is a local 401', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, { object: 'list', data: [] }))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const chat = await request(`${proxy.url}/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
  await expectErrorShape(t, chat, { status: 401, type: 'authentication_error', code: 'missing_api_key' })
  const models = await request(`${proxy.url}/models`)
  await expectErrorShape(t, models, { status: 401, code: 'missing_api_key' })
  t.equal(upstream.requests.length, 0, 'the upstream was not touched')

  const ok = await request(`${proxy.url}/models`, { headers: { authorization: 'Bearer sk-user-own' } })
  await ok.body.dump()
  t.equal(upstream.requests[0]?.headers.authorization, 'Bearer sk-user-own')
})

t.test('a canary key never appears in logs or responses, whatever happens', async (t) => {
  const canary = 'sk-canary-7f3a9c2e5b1d4f60'
  const clientCanary = 'sk-client-canary-4b8e2a6c9d'
  let call = 0
  const upstream = await startFakeUpstream(t, async (req, res) => {
    call += 1
    const auth = String(req.headers.authorization)
    if (req.url?.startsWith('/models')) return sendJson(res, 200, { object: 'list', data: [{ id: MODEL }] })
    if (call === 1) return sendJson(res, 200, completion(MODEL))
    if (call === 2) return sendSse(res, [chunkEvent(MODEL, 0, 'a'), chunkEvent(MODEL, 1, 'b', 'stop')])
    if (call === 3)
      return sendJson(
        res,
        401,
        { error: { message: `Bad key: ${auth}`, type: 'authentication_error', code: 'invalid_api_key' } },
        { 'x-echo': auth },
      )
    if (call === 4) return sendJson(res, 500, { error: { message: `crash while handling ${auth.slice(7)}` } })
    req.socket.destroy()
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, env: { TOPROUTER_API_KEY: canary }, config: { log: { level: 'trace' } } })
  const client = new OpenAI({ baseURL: proxy.url, apiKey: clientCanary, maxRetries: 0 })
  const seen: string[] = []
  const record = (value: unknown) => seen.push(typeof value === 'string' ? value : JSON.stringify(value))

  record(await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] }))
  const stream = await client.chat.completions.create({ model: MODEL, stream: true, messages: [] })
  for await (const chunk of stream) record(chunk)
  for (let i = 0; i < 3; i++) {
    const res = await request(`${proxy.url}/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${clientCanary}`, 'content-type': 'application/json' },
      body,
    })
    record(res.headers)
    record(await res.body.text())
  }
  record(await client.models.list())
  const bad = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${clientCanary}`, 'content-type': 'application/json' },
    body: '{bad',
  })
  record(bad.headers)
  record(await bad.body.text())

  const everything = seen.join('\n')
  const logs = proxy.logText()
  t.ok(logs.split('\n').length > 6, 'logs were captured')
  for (const secret of [canary, clientCanary]) {
    t.notOk(everything.includes(secret), `${secret.slice(0, 12)}… never appears in a response`)
    t.notOk(logs.includes(secret), `${secret.slice(0, 12)}… never appears in the logs`)
  }
  t.ok(
    upstream.requests.every((r) => r.headers.authorization === `Bearer ${canary}`),
    'the upstream did get the key',
  )
})
