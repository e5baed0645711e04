import { once } from 'node:events'
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http'
import OpenAI from 'openai'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { sleep, startFakeUpstream, TOPROUTER_RATE_LIMIT_HEADERS } from './helpers/fake-upstream.js'
import { startProxy, startTeamProxy, type TestProxy } from './helpers/proxy.js'

/**
 * Stream continuation (streams.continuation): a stream cut or stalled after its first event is
 * continued on the next model with the text so far as an assistant prefill. The fake upstream
 * honours prefill like a model that supports it: it strips the prefix it is given and streams the
 * rest of its canned answer. Its tokens include multi-byte characters, one of them split across
 * two writes (two TCP chunks), so the text the proxy keeps must be decoded exactly.
 */

const PRIMARY = 'google/gemini-3.5-flash'
const FALLBACK = 'anthropic/claude-4.6-sonnet'
const TOKENS = ['The ', 'quick ', 'brown ', 'fox ', '— ', 'jumps ', 'över ', 'the ', 'lazy ', 'dög ', '🦊 ', 'and ', 'naps', '.']
const ANSWER = TOKENS.join('')
/** This token's event is written in two halves, split inside the fox emoji's four bytes. */
const SPLIT_TOKEN = TOKENS.indexOf('🦊 ')

interface Behaviour {
  /** Cut the socket after this many content tokens (undefined: finish). */
  readonly cutAfter?: number
  /** Stop writing (keep the socket open) after this many content tokens. */
  readonly stallAfter?: number
  /** Answer a prefill request with 400, as a model without prefill support does. */
  readonly refusePrefill?: boolean
  /** Stream tool-call deltas after the first token. */
  readonly toolCalls?: boolean
  /** Add the usage chunk (choices: []) when the request asks for include_usage. */
  readonly usage?: boolean
  /** Cut every stream, prefilled or not, after this many content tokens. */
  readonly cutEvery?: number
  /** Put `logprobs` on each content chunk, as a request with `logprobs: true` gets. */
  readonly logprobs?: boolean
  /** Wait this long before answering a prefill request. */
  readonly prefillDelayMs?: number
}

interface Call {
  readonly model: string
  readonly prefill: string | undefined
  readonly body: Record<string, unknown>
  closed: boolean
}

function chunk(model: string, id: string, delta: Record<string, unknown>, finish: string | null = null, extra: object = {}): string {
  const choice = { index: 0, delta, finish_reason: finish, ...extra }
  return `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created: 1, model, choices: [choice] })}\n\n`
}

async function writeEvent(res: ServerResponse, event: string, split: boolean): Promise<void> {
  if (!split) {
    res.write(event)
    return
  }
  const bytes = Buffer.from(event)
  const fox = bytes.indexOf(Buffer.from('🦊'))
  res.write(bytes.subarray(0, fox + 2)) // two of the emoji's four bytes
  await sleep(30)
  res.write(bytes.subarray(fox + 2))
}

/** A TopRouter that streams ANSWER (or what is left of it after the prefill) per model behaviour. */
async function fakeModels(t: Test, behaviours: Record<string, Behaviour>) {
  const calls: Call[] = []
  const upstream = await startFakeUpstream(t, async (req: IncomingMessage, res: ServerResponse, recorded) => {
    const body = JSON.parse(recorded.body.toString('utf8')) as Record<string, unknown>
    const model = String(body.model)
    const messages = body.messages as Array<{ role: string; content: string }>
    const last = messages.at(-1)
    const prefill = last?.role === 'assistant' ? last.content : undefined
    const call: Call = { model, prefill, body, closed: false }
    calls.push(call)
    res.on('close', () => {
      call.closed = true
    })
    const behaviour = behaviours[model] ?? {}
    if (prefill !== undefined && behaviour.refusePrefill) {
      res.writeHead(400, { 'content-type': 'application/json', ...TOPROUTER_RATE_LIMIT_HEADERS })
      res.end(JSON.stringify({ error: { message: 'assistant prefill is not supported', code: 400 } }))
      return
    }
    if (prefill !== undefined && !ANSWER.startsWith(prefill)) {
      res.writeHead(400, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ error: { message: `prefill is not a prefix of the answer: ${JSON.stringify(prefill)}`, code: 400 } }))
      return
    }
    if (prefill !== undefined && behaviour.prefillDelayMs !== undefined) await sleep(behaviour.prefillDelayMs)
    if (res.destroyed) return
    const id = `gen-${model.split('/')[0]}-${calls.length}`
    res.writeHead(200, { 'content-type': 'text/event-stream', ...TOPROUTER_RATE_LIMIT_HEADERS })
    res.write(chunk(model, id, { role: 'assistant', content: '' }))
    let rest = ANSWER.slice(prefill?.length ?? 0)
    let sent = 0
    for (let i = 0; i < TOKENS.length && rest.length > 0; i++) {
      const token = TOKENS[i] as string
      const offset = ANSWER.length - rest.length
      // Tokens the prefill already covers are skipped; a token it covers partly is sent in part.
      if (TOKENS.slice(0, i + 1).join('').length <= offset) continue
      const text = rest.startsWith(token) ? token : rest.slice(0, TOKENS.slice(0, i + 1).join('').length - offset)
      if (behaviour.cutAfter !== undefined && sent === behaviour.cutAfter && prefill === undefined) {
        req.socket.destroy()
        return
      }
      if (behaviour.stallAfter !== undefined && sent === behaviour.stallAfter && prefill === undefined) return // silent, socket open
      if (behaviour.cutEvery !== undefined && sent === behaviour.cutEvery) {
        req.socket.destroy()
        return
      }
      const logprobs = behaviour.logprobs ? { logprobs: { content: [{ token: text, logprob: -0.1 }] } } : {}
      await writeEvent(res, chunk(model, id, { content: text }, null, logprobs), i === SPLIT_TOKEN)
      sent++
      rest = rest.slice(text.length)
      if (behaviour.toolCalls && sent === 1) {
        res.write(chunk(model, id, { tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'f', arguments: '' } }] }))
      }
      await sleep(2)
    }
    res.write(chunk(model, id, {}, 'stop'))
    const wantsUsage = (body.stream_options as { include_usage?: boolean } | undefined)?.include_usage === true
    if (behaviour.usage && wantsUsage) {
      const usage = { prompt_tokens: 10, completion_tokens: calls.length === 1 ? 14 : 9, total_tokens: calls.length === 1 ? 24 : 19 }
      res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created: 1, model, choices: [], usage })}\n\n`)
    }
    res.end('data: [DONE]\n\n')
  })
  return { upstream, calls }
}

const continuation = (overrides: Record<string, unknown> = {}) => ({
  streams: { continuation: { enabled: true, ...overrides } },
  upstream: { streamIdleTimeoutMs: 300 },
  fallbacks: { [PRIMARY]: [FALLBACK] },
})

function rawStream(proxy: TestProxy, model = PRIMARY, extra: Record<string, unknown> = {}) {
  return request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer sk-client' },
    body: JSON.stringify({ model, stream: true, messages: [{ role: 'user', content: 'Tell me about the fox.' }], ...extra }),
  })
}

interface StreamEvent {
  readonly model?: string
  readonly choices?: Array<{ delta?: { role?: string; content?: string } }>
  readonly error?: { code?: string }
}

/** The content deltas of an SSE body, in order, and its events. */
function readSse(text: string) {
  const events = text.split('\n\n').filter((event) => event.startsWith('data:'))
  const datas = events.map((event) => event.slice(5).trim())
  const parsed = datas.filter((data) => data !== '[DONE]').map((data) => JSON.parse(data) as StreamEvent)
  const content = parsed.map((event) => event.choices?.[0]?.delta?.content ?? '').join('')
  return { events, datas, parsed, content, dones: datas.filter((data) => data === '[DONE]').length }
}

t.test('a cut stream is continued on the fallback: the whole answer once, one [DONE], the SDK loop completes', async (t) => {
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { cutAfter: 6 } })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: continuation() })
  const client = new OpenAI({ baseURL: proxy.url, apiKey: 'sk-client', maxRetries: 0 })
  const stream = await client.chat.completions.create({
    model: PRIMARY,
    stream: true,
    messages: [{ role: 'user', content: 'Tell me about the fox.' }],
  })
  let text = ''
  const models: string[] = []
  for await (const part of stream) {
    text += part.choices[0]?.delta?.content ?? ''
    models.push(part.model)
  }
  t.equal(text, ANSWER, 'the concatenated text is the whole answer: no word twice, none missing')
  t.equal(calls.length, 2)
  t.equal(calls[1]?.model, FALLBACK, 'the next model of the chain continued it')
  t.equal(calls[1]?.prefill, TOKENS.slice(0, 6).join(''), 'its prefill is exactly the text already forwarded')
  const messages = calls[1]?.body.messages as unknown[]
  t.same(messages.at(-1), { role: 'assistant', content: TOKENS.slice(0, 6).join('') })
  t.same(messages.slice(0, -1), [{ role: 'user', content: 'Tell me about the fox.' }], 'the original messages, unchanged')
  t.ok(models.includes(PRIMARY) && models.includes(FALLBACK), 'chunks carry their own model: nothing re-labelled')
  t.equal(models.indexOf(FALLBACK), models.lastIndexOf(PRIMARY) + 1, 'the continuation follows the cut part')

  const metrics = await (await request(`${proxy.url}/metrics`)).body.text()
  t.match(metrics, new RegExp(`toprouter_proxy_stream_continuations_total\\{model="${FALLBACK}",outcome="started"\\} 1`))
  t.match(metrics, new RegExp(`toprouter_proxy_stream_continuations_total\\{model="${FALLBACK}",outcome="succeeded"\\} 1`))
  t.match(proxy.logText(), /continuing a cut stream/)
})

t.test('raw bytes: the continuation drops its role chunk, exactly one [DONE], multi-byte text split across chunks exact', async (t) => {
  // Cut after the split emoji token, so the kept text has crossed a chunk boundary inside a character.
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { cutAfter: SPLIT_TOKEN + 1 } })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: continuation() })
  const res = await rawStream(proxy)
  t.equal(res.statusCode, 200)
  const sse = readSse(await res.body.text())
  t.equal(sse.content, ANSWER)
  t.equal(sse.dones, 1, 'one data: [DONE]')
  t.equal(calls[1]?.prefill, TOKENS.slice(0, SPLIT_TOKEN + 1).join(''), 'the emoji decoded whole in the prefill')
  const roleChunks = sse.parsed.filter((event) => event.choices?.[0]?.delta?.role === 'assistant')
  t.equal(roleChunks.length, 1, "only the first part's role chunk")
  t.equal(roleChunks[0]?.model, PRIMARY)
  t.notOk(
    sse.parsed.some((event) => event.error !== undefined),
    'no error event',
  )
  t.equal(res.headers['x-proxy-model'], PRIMARY, 'the headers were committed by the first part')
})

t.test('no model left in the chain: the same model continues', async (t) => {
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { cutAfter: 3 } })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { ...continuation(), fallbacks: {} } })
  const sse = readSse(await (await rawStream(proxy)).body.text())
  t.equal(sse.content, ANSWER)
  t.same(
    calls.map((call) => call.model),
    [PRIMARY, PRIMARY],
  )
})

t.test('prefillModels: a fallback that does not match is skipped; none matching → the error event, no call', async (t) => {
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { cutAfter: 3 } })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { ...continuation({ prefillModels: ['openai/*'] }) },
  })
  const sse = readSse(await (await rawStream(proxy)).body.text())
  t.equal(calls.length, 1, 'no continuation call')
  t.equal(sse.parsed.at(-1)?.error?.code, 'stream_interrupted', 'the error event, as without continuation')
  t.equal(sse.dones, 0)
  t.match(
    proxy.logText(),
    /stream not continued.*no model of the chain matches prefillModels|no model of the chain matches prefillModels.*stream not continued/,
  )
})

t.test('a stall after the first event: the stalled socket is closed and the continuation served', async (t) => {
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { stallAfter: 4 } })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: continuation() })
  const started = performance.now()
  const sse = readSse(await (await rawStream(proxy)).body.text())
  t.equal(sse.content, ANSWER)
  t.equal(sse.dones, 1)
  t.ok(performance.now() - started >= 300, 'after streamIdleTimeoutMs')
  await sleep(100)
  t.equal(calls[0]?.closed, true, "the stalled stream's socket was closed by the proxy")
  t.equal(calls[1]?.prefill, TOKENS.slice(0, 4).join(''))
})

t.test('a continuation refused (400: no prefill support) → the error event, counted as refused', async (t) => {
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { cutAfter: 5 }, [FALLBACK]: { refusePrefill: true } })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: continuation() })
  const sse = readSse(await (await rawStream(proxy)).body.text())
  t.equal(calls.length, 2, 'asked once: a 4xx is not retried')
  t.equal(sse.content, TOKENS.slice(0, 5).join(''), 'what was forwarded stays')
  t.equal(sse.parsed.at(-1)?.error?.code, 'stream_interrupted', "the cut's own error event, as without continuation")
  t.equal(sse.dones, 0)
  const metrics = await (await request(`${proxy.url}/metrics`)).body.text()
  t.match(metrics, new RegExp(`toprouter_proxy_stream_continuations_total\\{model="${FALLBACK}",outcome="refused"\\} 1`))
})

t.test('a continuation cut too: continued again up to maxContinuations, then the error event', async (t) => {
  // Every stream is cut after 4 tokens: the answer's 14 tokens need 4 parts, so 3 continuations.
  for (const [maxContinuations, expected] of [
    [1, { calls: 2, content: TOKENS.slice(0, 8).join(''), error: 'stream_interrupted' }],
    [3, { calls: 4, content: ANSWER, error: undefined }],
  ] as const) {
    const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { cutEvery: 4 } })
    const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { ...continuation({ maxContinuations }), fallbacks: {} } })
    const sse = readSse(await (await rawStream(proxy)).body.text())
    t.equal(calls.length, expected.calls, `maxContinuations ${maxContinuations}: ${expected.calls} upstream calls`)
    t.equal(sse.content, expected.content)
    t.equal(sse.parsed.at(-1)?.error?.code, expected.error)
    t.equal(sse.dones, expected.error === undefined ? 1 : 0)
    if (maxContinuations === 3) t.equal(calls[3]?.prefill, TOKENS.slice(0, 12).join(''), 'each prefill is all the text so far')
  }
})

t.test('past the request deadline: not continued, the error event', async (t) => {
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { stallAfter: 2 } })
  // The stall is seen after 400 ms of silence, when the request's 300 ms deadline has passed.
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { ...continuation(), upstream: { streamIdleTimeoutMs: 400, requestTimeoutMs: 300 } },
  })
  const sse = readSse(await (await rawStream(proxy)).body.text())
  t.equal(calls.length, 1, 'no continuation call')
  t.equal(sse.parsed.at(-1)?.error?.code, 'upstream_timeout', "the stall's own error event")
  const line = proxy.logLines().find((entry) => entry.msg === 'stream not continued')
  t.equal(line?.reason, 'the request deadline has passed')
})

t.test('tool calls in the stream: not continued, the error event', async (t) => {
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { cutAfter: 3, toolCalls: true } })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: continuation() })
  const sse = readSse(await (await rawStream(proxy)).body.text())
  t.equal(calls.length, 1, 'no continuation call')
  t.equal(sse.parsed.at(-1)?.error?.code, 'stream_interrupted')
  t.match(proxy.logText(), /not plain text/)
})

t.test('logprobs in the stream: not continued (a prefill cannot carry them), the error event', async (t) => {
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { cutAfter: 3, logprobs: true } })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: continuation() })
  const sse = readSse(await (await rawStream(proxy, PRIMARY, { logprobs: true })).body.text())
  t.equal(calls.length, 1)
  t.equal(sse.parsed.at(-1)?.error?.code, 'stream_interrupted')
})

t.test('the continuation is the same request: every field kept, fallbacks stripped', async (t) => {
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { cutAfter: 3 } })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: continuation() })
  const sse = readSse(await (await rawStream(proxy, PRIMARY, { temperature: 0, max_tokens: 50, fallbacks: [FALLBACK] })).body.text())
  t.equal(sse.content, ANSWER)
  const body = calls[1]?.body ?? {}
  t.equal(body.temperature, 0)
  t.equal(body.max_tokens, 50)
  t.equal(body.stream, true)
  t.equal(body.model, FALLBACK)
  t.notOk('fallbacks' in body, 'the request-level fallbacks field is not sent upstream')
})

t.test('disabled (the default): a cut stream ends with the error event, one upstream call', async (t) => {
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { cutAfter: 3 } })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { fallbacks: { [PRIMARY]: [FALLBACK] } } })
  const sse = readSse(await (await rawStream(proxy)).body.text())
  t.equal(calls.length, 1)
  t.equal(sse.content, TOKENS.slice(0, 3).join(''))
  t.equal(sse.parsed.at(-1)?.error?.code, 'stream_interrupted')
})

t.test('enabled on a stream that is not cut: byte-identical to disabled', async (t) => {
  const enabled = await startProxy(t, { upstreamUrl: (await fakeModels(t, {})).upstream.url, config: continuation() })
  const disabled = await startProxy(t, { upstreamUrl: (await fakeModels(t, {})).upstream.url, config: {} })
  const a = await (await rawStream(enabled)).body.text()
  const b = await (await rawStream(disabled)).body.text()
  t.equal(a, b)
  t.equal(readSse(a).content, ANSWER)
})

t.test('the client gone while the continuation is asked for: nothing more is written, no error', async (t) => {
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { stallAfter: 2 }, [FALLBACK]: { prefillDelayMs: 1_000 } })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { ...continuation(), upstream: { streamIdleTimeoutMs: 200 } } })
  // node:http without an agent: the socket goes with the request when it is destroyed.
  const client = httpRequest(`${proxy.url}/chat/completions`, {
    method: 'POST',
    agent: false,
    headers: { 'content-type': 'application/json', authorization: 'Bearer sk-client' },
  })
  client.end(JSON.stringify({ model: PRIMARY, stream: true, messages: [{ role: 'user', content: 'hi' }] }))
  const [res] = (await once(client, 'response')) as [IncomingMessage]
  let received = ''
  res.on('data', (part: Buffer) => {
    received += part.toString()
  })
  res.on('error', () => {})
  client.on('error', () => {})
  // Leave once the stall has been seen and the continuation asked for (the fallback waits 1 s to answer).
  for (let i = 0; calls.length < 2 && i < 300; i++) await sleep(10)
  t.equal(readSse(received).content, TOKENS.slice(0, 2).join(''), 'the client has the first part only')
  client.destroy()
  await sleep(300)
  t.equal(calls[1]?.closed, true, 'the continuation request was abandoned (its socket closed) when the client left')
  t.equal(calls.length, 2, 'the one continuation call, then nothing')
  t.notMatch(proxy.logText(), /"level":50/, 'no error logged')
  const metrics = await (await request(`${proxy.url}/metrics`)).body.text()
  t.match(metrics, /toprouter_proxy_stream_endings_total\{model="google\/gemini-3.5-flash",ending="client_gone"\} 1/)
})

t.test('team mode: the continuation is recorded against the request, usage of the part that reports it', async (t) => {
  const { upstream, calls } = await fakeModels(t, { [PRIMARY]: { cutAfter: 4, usage: true }, [FALLBACK]: { usage: true } })
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url, config: continuation() })
  const key = await proxy.createKey({ name: 'continued' })
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key.secret}` },
    body: JSON.stringify({ model: PRIMARY, stream: true, messages: [{ role: 'user', content: 'Tell me about the fox.' }] }),
  })
  const sse = readSse(await res.body.text())
  t.equal(sse.content, ANSWER)
  t.notOk(
    sse.parsed.some((event) => Array.isArray(event.choices) && event.choices.length === 0),
    'the injected usage chunk is removed from the continuation too',
  )
  t.equal(calls.length, 2)
  t.equal(
    (calls[1]?.body.stream_options as { include_usage?: boolean } | undefined)?.include_usage,
    true,
    'the continuation asks for usage too',
  )
  await proxy.team?.flushUsage()
  const rows = await proxy.usageRows()
  t.equal(rows.length, 1, 'one record for the request')
  t.equal(rows[0]?.model_served, FALLBACK, 'served (finished) by the continuing model')
  t.equal(rows[0]?.total_tokens, 19, "the continuation's usage (the cut part reported none)")
  t.equal(rows[0]?.ending, 'complete')
  t.equal(rows[0]?.attempts, 2, 'both parts counted as attempts')
})
