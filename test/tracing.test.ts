import { spawn } from 'node:child_process'
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { openOtelTracer } from '../src/tracing/otel-tracer.js'
import { NO_TRACER, tracingRequested } from '../src/tracing/request-tracer.js'
import { chunkEvent, completion, sendJson, sendSse, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { GATEWAY_KEY as GATEWAY_KEY_OF_TEAM_PROXY, startProxy, startTeamProxy } from './helpers/proxy.js'

/**
 * OpenTelemetry (SPEC § "The operator's view"): a span per request, a child span per upstream
 * attempt, W3C `traceparent` upstream, exported over OTLP/HTTP (JSON) to a small receiver here.
 * The proxy's tracer is built the way main.ts builds it, from the standard OTEL_* variables.
 */

const MODEL = 'google/gemini-3.5-flash'
const FALLBACK = 'anthropic/claude-haiku-4.5'
const CLIENT_KEY = 'sk-client-secret-0123456789'
const GATEWAY_KEY = 'sk-gateway-secret-9876543210'
const CONTENT = 'a question nobody else should read'
const BODY = JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: CONTENT }] })
const CLIENT_TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736'
const CLIENT_SPAN_ID = '00f067aa0ba902b7'
const SERVER = 2
const CLIENT = 3

interface OtlpValue {
  stringValue?: string
  intValue?: number | string
  boolValue?: boolean
  doubleValue?: number
  arrayValue?: { values?: OtlpValue[] }
}
interface OtlpSpan {
  traceId: string
  spanId: string
  parentSpanId?: string
  name: string
  kind: number
  attributes?: Array<{ key: string; value: OtlpValue }>
  events?: Array<{ name: string; attributes?: Array<{ key: string; value: OtlpValue }> }>
  status?: { code?: number }
}
interface Received {
  readonly spans: OtlpSpan[]
  readonly resources: Array<Record<string, unknown>>
  readonly headers: IncomingMessage['headers'][]
  readonly url: string
}

function plain(value: OtlpValue): unknown {
  if (value.stringValue !== undefined) return value.stringValue
  if (value.intValue !== undefined) return Number(value.intValue)
  if (value.boolValue !== undefined) return value.boolValue
  if (value.doubleValue !== undefined) return value.doubleValue
  if (value.arrayValue !== undefined) return (value.arrayValue.values ?? []).map(plain)
  return undefined
}

function attrs(list: Array<{ key: string; value: OtlpValue }> | undefined): Record<string, unknown> {
  return Object.fromEntries((list ?? []).map(({ key, value }) => [key, plain(value)]))
}

/** A tiny OTLP/HTTP receiver: POST /v1/traces with the JSON protocol. */
async function startReceiver(tt: Test): Promise<Received> {
  const received: Received = { spans: [], resources: [], headers: [], url: '' }
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      if (req.method === 'POST' && req.url === '/v1/traces') {
        received.headers.push(req.headers)
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
          resourceSpans?: Array<{ resource?: { attributes?: [] }; scopeSpans?: Array<{ spans?: OtlpSpan[] }> }>
        }
        for (const resourceSpans of body.resourceSpans ?? []) {
          received.resources.push(attrs(resourceSpans.resource?.attributes))
          for (const scope of resourceSpans.scopeSpans ?? []) received.spans.push(...(scope.spans ?? []))
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end('{}')
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  ;(received as { url: string }).url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  tt.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return received
}

/** The standard variables, set for the tracer's construction (the SDK and exporter read them then). */
function withOtelEnv<T>(env: Record<string, string>, build: () => T): T {
  const saved = Object.fromEntries(Object.keys(env).map((key) => [key, process.env[key]]))
  Object.assign(process.env, env)
  try {
    return build()
  } finally {
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key]
      else process.env[key] = value
    }
  }
}

async function tracedProxy(tt: Test, upstreamUrl: string, config: Record<string, unknown> = {}) {
  const receiver = await startReceiver(tt)
  const tracer = withOtelEnv(
    {
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_EXPORTER_OTLP_HEADERS: 'x-collector-token=collector-secret',
      OTEL_SERVICE_NAME: 'proxy-under-test',
      OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=test',
      OTEL_BSP_SCHEDULE_DELAY: '20',
    },
    () => openOtelTracer({ serviceVersion: '0.0.0-test' }),
  )
  const proxy = await startProxy(tt, { upstreamUrl, config, env: { TOPROUTER_API_KEY: GATEWAY_KEY }, tracer })
  return { proxy, receiver }
}

async function waitForSpans(receiver: Received, count: number): Promise<OtlpSpan[]> {
  for (let waited = 0; receiver.spans.length < count && waited < 5000; waited += 20) await sleep(20)
  return receiver.spans
}

function noSecretsIn(tt: Test, spans: OtlpSpan[]): void {
  const values = JSON.stringify(spans.map((span) => [span.attributes, span.events]))
  for (const secret of [CLIENT_KEY, GATEWAY_KEY, CONTENT, 'Bearer'])
    tt.notOk(values.includes(secret), `no span carries ${secret.slice(0, 12)}…`)
}

t.test('the environment decides whether tracing is on', async (tt) => {
  tt.notOk(tracingRequested({}), 'no endpoint: off')
  tt.notOk(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: ' ' }), 'a blank endpoint: off')
  tt.ok(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }))
  tt.ok(tracingRequested({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces' }))
  tt.notOk(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_SDK_DISABLED: 'true' }))
  tt.notOk(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_TRACES_EXPORTER: 'none' }))
  tt.equal(NO_TRACER.startRequest('POST', '/chat/completions', {}, MODEL, 0), NO_TRACER.startRequest('GET', '/models', {}, undefined, 0))
  tt.ok(Object.isFrozen(NO_TRACER.startRequest('POST', '/x', {}, undefined, 0).attempt(MODEL, 1)), 'one shared frozen no-op')
})

t.test('a retried request: one server span, a client span per attempt, traceparent upstream, the client trace continued', async (tt) => {
  const upstream = await startFakeUpstream(tt, (_req, res, _recorded, index) => {
    if (index === 0) sendJson(res, 503, { error: { message: 'busy' } }, { 'retry-after-ms': '15' })
    else sendJson(res, 200, completion(`${MODEL}-0501`))
  })
  const { proxy, receiver } = await tracedProxy(tt, upstream.url)
  const res = await request(`${proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${CLIENT_KEY}`,
      'content-type': 'application/json',
      traceparent: `00-${CLIENT_TRACE_ID}-${CLIENT_SPAN_ID}-01`,
    },
    body: BODY,
  })
  tt.equal(res.statusCode, 200)
  await res.body.text()
  const spans = await waitForSpans(receiver, 3)
  tt.equal(spans.length, 3, 'a request span and two attempt spans')

  const server = spans.find((span) => span.kind === SERVER) as OtlpSpan
  tt.ok(server, 'a SERVER span')
  tt.equal(server.name, 'POST /v1/chat/completions')
  tt.equal(server.traceId, CLIENT_TRACE_ID, 'the client’s trace is continued')
  tt.equal(server.parentSpanId, CLIENT_SPAN_ID, 'as a child of the client’s span')
  tt.match(attrs(server.attributes), {
    'http.request.method': 'POST',
    'http.route': '/v1/chat/completions',
    'http.response.status_code': 200,
    'gen_ai.operation.name': 'chat',
    'gen_ai.provider.name': 'toprouter',
    'gen_ai.request.model': MODEL,
    'gen_ai.response.model': `${MODEL}-0501`,
    'gen_ai.response.id': 'gen-123',
    'gen_ai.usage.input_tokens': 5,
    'gen_ai.usage.output_tokens': 2,
    'gen_ai.response.finish_reasons': ['stop'],
    'toprouter.attempts': 2,
    'toprouter.served_by': MODEL,
  })

  const attempts = spans
    .filter((span) => span.kind === CLIENT)
    .sort((a, b) => Number(attrs(a.attributes)['toprouter.attempt']) - Number(attrs(b.attributes)['toprouter.attempt']))
  tt.equal(attempts.length, 2)
  for (const attempt of attempts) {
    tt.equal(attempt.traceId, CLIENT_TRACE_ID)
    tt.equal(attempt.parentSpanId, server.spanId, 'an attempt is a child of its request')
    tt.equal(attempt.name, `chat ${MODEL}`)
  }
  const [first, second] = attempts as [OtlpSpan, OtlpSpan]
  tt.match(attrs(first.attributes), {
    'toprouter.attempt': 1,
    'toprouter.attempt_for_model': 1,
    'http.response.status_code': 503,
    'error.type': '503',
    'toprouter.retry.reason': '503',
    'toprouter.retry.delay_source': 'server',
    'toprouter.pushback_ms': 15,
    'toprouter.breaker.state': 'closed',
    'toprouter.fallback.hop': 0,
    'gen_ai.request.model': MODEL,
  })
  tt.equal(first.status?.code, 2, 'the failed attempt is an error')
  tt.match(attrs(second.attributes), { 'toprouter.attempt': 2, 'http.response.status_code': 200, 'toprouter.breaker.state': 'closed' })
  tt.notOk('toprouter.retry.reason' in attrs(second.attributes), 'no retry follows the attempt that served')

  tt.same(
    upstream.requests.map((r) => r.headers.traceparent),
    attempts.map((attempt) => `00-${CLIENT_TRACE_ID}-${attempt.spanId}-01`),
    'each attempt sent its own span as the traceparent',
  )
  tt.match(receiver.resources[0], { 'service.name': 'proxy-under-test', 'deployment.environment': 'test', 'service.version': '0.0.0-test' })
  tt.equal(receiver.headers[0]?.['x-collector-token'], 'collector-secret', 'OTEL_EXPORTER_OTLP_HEADERS honoured')
  noSecretsIn(tt, spans)
})

t.test('a fallback: the hop and the models on the attempt spans, an event on the request span', async (tt) => {
  const upstream = await startFakeUpstream(tt, (_req, res, recorded) => {
    const model = (JSON.parse(recorded.body.toString()) as { model: string }).model
    if (model === MODEL) sendJson(res, 503, { error: { message: 'down' } })
    else sendJson(res, 200, completion(model))
  })
  const { proxy, receiver } = await tracedProxy(tt, upstream.url, { retry: { maxAttempts: 1 }, fallbacks: { [MODEL]: [FALLBACK] } })
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
    body: BODY,
  })
  tt.equal(res.statusCode, 200)
  await res.body.text()
  const spans = await waitForSpans(receiver, 3)
  const server = spans.find((span) => span.kind === SERVER) as OtlpSpan
  tt.notOk(server.parentSpanId, 'no client traceparent: a new trace')
  tt.match(attrs(server.attributes), { 'gen_ai.request.model': MODEL, 'gen_ai.response.model': FALLBACK, 'toprouter.served_by': FALLBACK })
  tt.match(server.events, [{ name: 'fallback' }])
  tt.match(attrs(server.events?.[0]?.attributes), {
    'toprouter.fallback.from': MODEL,
    'toprouter.fallback.to': FALLBACK,
    'toprouter.fallback.hop': 1,
  })
  const attempts = spans.filter((span) => span.kind === CLIENT).map((span) => attrs(span.attributes))
  attempts.sort((a, b) => Number(a['toprouter.attempt']) - Number(b['toprouter.attempt']))
  tt.match(attempts, [
    {
      'gen_ai.request.model': MODEL,
      'toprouter.fallback.hop': 0,
      'http.response.status_code': 503,
      'toprouter.retry.stopped': 'attempts_exhausted',
    },
    { 'gen_ai.request.model': FALLBACK, 'toprouter.fallback.hop': 1, 'toprouter.fallback.from': MODEL, 'http.response.status_code': 200 },
  ])
  for (const [i, recorded] of upstream.requests.entries()) {
    tt.match(recorded.headers.traceparent, new RegExp(`^00-${server.traceId}-[0-9a-f]{16}-01$`), `attempt ${i + 1} carried the trace`)
  }
  noSecretsIn(tt, spans)
})

const USAGE_EVENT = `data: ${JSON.stringify({ id: 'gen-456', object: 'chat.completion.chunk', model: `${MODEL}-0501`, choices: [], usage: { prompt_tokens: 11, completion_tokens: 3, total_tokens: 14 } })}\n\n`

t.test('a stream: the response model from its first event, the usage from its usage chunk', async (tt) => {
  const upstream = await startFakeUpstream(tt, (_req, res) =>
    sendSse(res, [chunkEvent(`${MODEL}-0501`, 0, 'Hel'), chunkEvent(`${MODEL}-0501`, 1, 'lo', 'stop'), USAGE_EVENT], 5),
  )
  const { proxy, receiver } = await tracedProxy(tt, upstream.url)
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, stream: true, messages: [{ role: 'user', content: CONTENT }] }),
  })
  tt.equal(res.statusCode, 200)
  const text = await res.body.text()
  tt.ok(text.includes(USAGE_EVENT), 'the client gets the stream unchanged')
  const spans = await waitForSpans(receiver, 2)
  const server = spans.find((span) => span.kind === SERVER) as OtlpSpan
  tt.match(attrs(server.attributes), {
    'gen_ai.response.model': `${MODEL}-0501`,
    'gen_ai.usage.input_tokens': 11,
    'gen_ai.usage.output_tokens': 3,
    'http.response.status_code': 200,
  })
  noSecretsIn(tt, spans)
})

t.test('an open breaker: the attempt span says so, nothing is sent, the request span is an error', async (tt) => {
  const upstream = await startFakeUpstream(tt, (_req, res) => sendJson(res, 503, { error: { message: 'down' } }))
  const { proxy, receiver } = await tracedProxy(tt, upstream.url, {
    retry: { maxAttempts: 1 },
    breaker: { volumeThreshold: 1, errorThresholdPercentage: 1 },
  })
  for (let i = 0; i < 2; i++) {
    const res = await request(`${proxy.url}/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
      body: BODY,
    })
    tt.equal(res.statusCode, 503)
    await res.body.text()
  }
  tt.equal(upstream.requests.length, 1, 'the open breaker sent nothing')
  const spans = await waitForSpans(receiver, 4)
  const servers = spans.filter((span) => span.kind === SERVER)
  const attempts = spans.filter((span) => span.kind === CLIENT).map((span) => attrs(span.attributes))
  tt.equal(servers.length, 2)
  for (const server of servers) tt.equal(server.status?.code, 2, 'a 503 request span is an error')
  tt.match(
    attempts.sort((a, b) => String(a['error.type']).localeCompare(String(b['error.type']))),
    [
      { 'error.type': '503', 'toprouter.breaker.state': 'closed', 'toprouter.retry.stopped': 'attempts_exhausted' },
      { 'error.type': 'breaker_open', 'toprouter.breaker.state': 'open', 'toprouter.retry.stopped': 'breaker_open' },
    ],
  )
  const refused = servers.find((span) =>
    spans.some((s) => s.parentSpanId === span.spanId && attrs(s.attributes)['error.type'] === 'breaker_open'),
  )
  tt.equal(attrs(refused?.attributes)['toprouter.attempts'], 0, 'as x-proxy-attempts: nothing was sent')
})

t.test('team mode: no member key, gateway key or content in any span', async (tt) => {
  const upstream = await startFakeUpstream(tt, (_req, res) => sendJson(res, 200, completion()))
  const receiver = await startReceiver(tt)
  const tracer = withOtelEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_BSP_SCHEDULE_DELAY: '20' }, () =>
    openOtelTracer({ serviceVersion: '0.0.0-test' }),
  )
  const proxy = await startTeamProxy(tt, { upstreamUrl: upstream.url, tracer })
  const key = await proxy.createKey({ name: 'alice' })
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key.secret}`, 'content-type': 'application/json' },
    body: BODY,
  })
  tt.equal(res.statusCode, 200)
  await res.body.text()
  const spans = await waitForSpans(receiver, 2)
  tt.equal(spans.length, 2)
  const values = JSON.stringify(spans.map((span) => [span.attributes, span.events]))
  tt.notOk(values.includes(key.secret), 'no member key')
  tt.notOk(values.includes(GATEWAY_KEY_OF_TEAM_PROXY), 'no gateway key')
  tt.notOk(values.includes(CONTENT), 'no message content')
  tt.match(upstream.requests[0]?.headers.traceparent, new RegExp(`^00-${spans[0]?.traceId}-`))
})

t.test('/models: a request span and its attempt span', async (tt) => {
  const upstream = await startFakeUpstream(tt, (_req, res) => sendJson(res, 200, { object: 'list', data: [{ id: MODEL }] }))
  const { proxy, receiver } = await tracedProxy(tt, upstream.url)
  const res = await request(`${proxy.url}/v1/models`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } })
  tt.equal(res.statusCode, 200)
  await res.body.text()
  const spans = await waitForSpans(receiver, 2)
  const server = spans.find((span) => span.kind === SERVER) as OtlpSpan
  const attempt = spans.find((span) => span.kind === CLIENT) as OtlpSpan
  tt.equal(server.name, 'GET /v1/models')
  tt.equal(attempt.parentSpanId, server.spanId)
  tt.equal(upstream.requests[0]?.headers.traceparent, `00-${server.traceId}-${attempt.spanId}-01`)
  tt.notOk('gen_ai.operation.name' in attrs(server.attributes), 'not a chat')
})

t.test('untraced: the client’s own traceparent goes upstream as it came, nothing added', async (tt) => {
  const upstream = await startFakeUpstream(tt, (_req, res) => sendJson(res, 200, completion()))
  const proxy = await startProxy(tt, { upstreamUrl: upstream.url })
  const traceparent = `00-${CLIENT_TRACE_ID}-${CLIENT_SPAN_ID}-01`
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json', traceparent },
    body: BODY,
  })
  await res.body.text()
  tt.equal(upstream.requests[0]?.headers.traceparent, traceparent)
  const bare = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
    body: BODY,
  })
  await bare.body.text()
  tt.notOk('traceparent' in (upstream.requests[1]?.headers ?? {}), 'no traceparent invented')
})

t.test('the real CLI: OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on, and SIGTERM exports the last spans', async (tt) => {
  const upstream = await startFakeUpstream(tt, (_req, res) => sendJson(res, 200, completion()))
  const receiver = await startReceiver(tt)
  const main = fileURLToPath(new URL('../dist/main.js', import.meta.url))
  const child = spawn(process.execPath, [main, '--port', '0', '--upstream', upstream.url], {
    // A long batch delay: only the drain's shutdown can have sent the span.
    env: {
      PATH: process.env.PATH ?? '',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_BSP_SCHEDULE_DELAY: '60000',
      TOPROUTER_API_KEY: GATEWAY_KEY,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  tt.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  let out = ''
  child.stdout.on('data', (chunk: Buffer) => {
    out += chunk.toString()
  })
  for (let waited = 0; !out.includes('listening on') && waited < 10_000; waited += 20) await sleep(20)
  const listening = out.split('\n').find((line) => line.includes('listening on')) ?? '{}'
  const { port, tracing } = JSON.parse(listening) as { port: number; tracing: string }
  tt.equal(tracing, 'OTLP/HTTP')
  const res = await request(`http://127.0.0.1:${port}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: BODY,
  })
  tt.equal(res.statusCode, 200)
  await res.body.text()
  await sleep(100)
  tt.equal(receiver.spans.length, 0, 'nothing exported yet (batched)')
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  tt.equal(await exited, 0)
  tt.equal(receiver.spans.length, 2, 'the drain exported the request and attempt spans')
  tt.match(receiver.resources[0], { 'service.name': 'toprouter-proxy' })
})

t.test('the real CLI without the variable loads nothing of OpenTelemetry', async (tt) => {
  const main = fileURLToPath(new URL('../dist/main.js', import.meta.url))
  // The server path up to listening, with a resolve hook reporting every module it loads.
  const hooks = `let port; export function initialize(data) { port = data.port }
    export async function resolve(specifier, context, next) { const r = await next(specifier, context); port.postMessage(r.url); return r }`
  const probe = `
    import { register } from 'node:module'
    import { MessageChannel } from 'node:worker_threads'
    const { port1, port2 } = new MessageChannel()
    const loaded = []
    port1.on('message', (url) => loaded.push(url))
    port1.unref()
    register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hooks)}), import.meta.url, { data: { port: port2 }, transferList: [port2] })
    process.argv = [process.argv[0], ${JSON.stringify(main)}, '--port', '0']
    await import(${JSON.stringify(main)})
    setTimeout(() => { process.stdout.write('\\nLOADED ' + JSON.stringify(loaded) + '\\n'); process.exit(0) }, 300)
  `
  const child = spawn(process.execPath, ['--input-type=module', '-e', probe], {
    env: { PATH: process.env.PATH ?? '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout.on('data', (chunk: Buffer) => {
    out += chunk.toString()
  })
  await new Promise((resolve) => child.once('exit', resolve))
  const line = out.split('\n').find((l) => l.startsWith('LOADED ')) ?? 'LOADED []'
  const loaded = JSON.parse(line.slice('LOADED '.length)) as string[]
  tt.ok(
    loaded.some((url) => url.includes('/dist/app.js')),
    'the server was loaded',
  )
  tt.same(
    loaded.filter((url) => url.includes('@opentelemetry') || url.includes('otel-tracer')),
    [],
    'no OpenTelemetry module',
  )
})
