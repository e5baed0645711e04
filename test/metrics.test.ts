import t from 'tap'
import { request } from 'undici'
import { completion, sendJson, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'

const MODEL = 'google/gemini-3.5-flash'

t.test('/metrics speaks Prometheus text with requests, attempts, retries and latency — and no key material', async (t) => {
  const canary = 'sk-metrics-canary-1234567890'
  let calls = 0
  const upstream = await startFakeUpstream(t, (_req, res) => {
    calls += 1
    if (calls === 1) return sendJson(res, 503, { error: { message: 'busy' } })
    sendJson(res, 200, completion(MODEL))
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, env: { TOPROUTER_API_KEY: canary } })
  const chat = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [] }),
  })
  t.equal(chat.statusCode, 200)
  await chat.body.dump()
  const res = await request(`${proxy.url}/metrics`)
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  const text = await res.body.text()
  t.match(text, /toprouter_proxy_requests_total\{route="\/chat\/completions",status="200",model="google\/gemini-3\.5-flash"\} 1/)
  t.match(text, /toprouter_proxy_upstream_attempts_total\{model="google\/gemini-3\.5-flash",outcome="503"\} 1/)
  t.match(text, /toprouter_proxy_upstream_attempts_total\{model="google\/gemini-3\.5-flash",outcome="success"\} 1/)
  t.match(text, /toprouter_proxy_retries_total\{model="google\/gemini-3\.5-flash",reason="503"\} 1/)
  t.match(text, /toprouter_proxy_upstream_latency_seconds_count\{model="google\/gemini-3\.5-flash"\} 1/)
  t.notMatch(text, canary)
  t.notMatch(text, /Bearer/)
})

t.test('model label cardinality is bounded', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) =>
    sendJson(res, 404, { error: { message: 'Model not found', type: 'not_found_error', code: 'model_not_found' } }),
  )
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const models = [...Array.from({ length: 130 }, (_, i) => `vendor/model-${i}`), 'x'.repeat(500), 'evil"} 1\nfake_metric 9']
  for (const model of models) {
    const res = await request(`${proxy.url}/chat/completions`, {
      method: 'POST',
      headers: { authorization: 'Bearer k', 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [] }),
    })
    await res.body.dump()
  }
  const text = await (await request(`${proxy.url}/metrics`)).body.text()
  const labels = new Set([...text.matchAll(/toprouter_proxy_requests_total\{[^}]*model="([^"]*)"/g)].map((m) => m[1]))
  t.ok(labels.size <= 102, `${labels.size} distinct model labels for ${models.length} models`)
  t.ok(labels.has('other'), 'the rest are counted as other')
  t.notMatch(text, /^fake_metric/m, 'a hostile model id cannot inject a metric line')
  t.notMatch(text, /x{200}/)
})
