import type { ServerResponse } from 'node:http'
import { PassThrough } from 'node:stream'
import OpenAI from 'openai'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { hasCompleteDataEvent, hasFinishReason, relayStream, type StreamEnding } from '../src/streaming/sse.js'
import { expectErrorShape } from './helpers/assert-error.js'
import { chunkEvent, sendSse, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy, type TestProxy } from './helpers/proxy.js'

/**
 * SPEC § "Resilience semantics" → Streams, through the real proxy against a scripted upstream:
 * the commit point is the first `data:` event (not the headers), and after the commit a stream
 * never ends in a silent lie — a stall, a cut or an unfinished end gets exactly one error event
 * at the end; a finished stream without `[DONE]` gets exactly one; everything else is relayed
 * byte for byte.
 */

const MODEL = 'google/gemini-3.5-flash'
const FALLBACK = 'anthropic/claude-4.6-sonnet'
const DONE = 'data: [DONE]\n\n'
const auth = { authorization: 'Bearer sk-client-key' }

function chatInit(extra: Record<string, unknown> = {}) {
  return {
    method: 'POST' as const,
    headers: { ...auth, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, stream: true, messages: [{ role: 'user', content: 'hi' }], ...extra }),
  }
}

function streamChat(proxy: TestProxy, extra: Record<string, unknown> = {}) {
  return request(`${proxy.url}/chat/completions`, chatInit(extra))
}

/** 200 + text/event-stream headers on the wire now, Nagle off so each write is its own segment. */
function openStream(res: ServerResponse): void {
  res.socket?.setNoDelay(true)
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
  res.flushHeaders()
}

const closed = (res: ServerResponse) => new Promise<void>((resolve) => (res.destroyed ? resolve() : res.once('close', () => resolve())))

/** Writes `text` in the given slices, `delayMs` apart, so markers straddle TCP writes. */
async function writeSlices(res: ServerResponse, text: string, cuts: readonly number[], delayMs: number): Promise<void> {
  let from = 0
  for (const cut of [...cuts, text.length]) {
    res.write(text.slice(from, cut))
    from = cut
    await sleep(delayMs)
  }
}

/**
 * The body is `prefix` (what the upstream sent, unchanged) followed by exactly one event, the
 * error event {"error":{"message","type","code"}} with three strings, and nothing after it.
 */
function expectErrorTail(t: Test, text: string, prefix: string, code: string): void {
  t.equal(text.slice(0, prefix.length), prefix, 'everything the upstream sent is relayed unchanged before the error')
  const tail = text.slice(prefix.length)
  if (!t.match(tail, /^data: \{"error":[^\n]*\}\n\n$/, 'then exactly one event, an error event, ends the stream')) return
  const parsed = JSON.parse(tail.slice('data: '.length, -2)) as { error: Record<string, unknown> }
  t.same(Object.keys(parsed), ['error'], 'only an error key')
  t.same(Object.keys(parsed.error).sort(), ['code', 'message', 'type'], 'exactly message, type, code')
  for (const key of ['message', 'type', 'code']) t.equal(typeof parsed.error[key], 'string', `${key} is a string`)
  t.equal(parsed.error.code, code, 'code')
  t.equal(text.split('{"error":').length - 1, 1, 'one error event in the whole stream')
}

/** The value of toprouter_proxy_stream_endings_total for this model and ending (0 when absent). */
async function endingCount(proxy: TestProxy, ending: StreamEnding, model = MODEL): Promise<number> {
  const res = await request(`${proxy.url}/metrics`)
  const text = await res.body.text()
  const line = text
    .split('\n')
    .find(
      (l) => l.startsWith('toprouter_proxy_stream_endings_total{') && l.includes(`ending="${ending}"`) && l.includes(`model="${model}"`),
    )
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1))
}

/** A chunk whose JSON the test writes by hand, e.g. with a space after a colon. */
const rawFinishEvent = (finish: string) =>
  `data: {"id":"gen-456","object":"chat.completion.chunk","created":1760000000,"model":"${MODEL}","choices":[{"index":0,"delta":{},"finish_reason": "${finish}"}]}\n\n`

const usage = { prompt_tokens: 11, completion_tokens: 4, total_tokens: 15 }
const usageEvent = `data: ${JSON.stringify({ id: 'gen-456', object: 'chat.completion.chunk', created: 1760000000, model: MODEL, choices: [], usage })}\n\n`

// ─── hasFinishReason and the relay, without sockets ─────────────────────────────────────────────

t.test('hasCompleteDataEvent: a data line at the start of a line, then the blank line that ends its event', async (t) => {
  const cases: [string, boolean][] = [
    ['data: {"a":1}\n\n', true],
    ['data:{"a":1}\r\n\r\n', true],
    ['data: x\n\r\n', true],
    ['data: x\r\n\n', true],
    ['data: x\n', false],
    ['data: x', false],
    [': keep-alive\n\n', false],
    [': keep-alive\n\ndata: x\n\n', true],
    [': keep-alive\n\ndata: x\n', false],
    [': a comment that says data: here\n\n', false],
    ['event: message\ndata: x\n\n', true],
    ['id: 1\n\n', false],
    ['', false],
  ]
  for (const [text, expected] of cases) t.equal(hasCompleteDataEvent(Buffer.from(text)), expected, JSON.stringify(text))
})

t.test('hasFinishReason: a string value counts, null and a missing value do not', async (t) => {
  const cases: Array<[string, boolean]> = [
    ['{"choices":[{"delta":{},"finish_reason":"stop"}]}', true],
    ['{"choices":[{"delta":{},"finish_reason": "length"}]}', true],
    ['{"finish_reason" : "tool_calls"}', true],
    ['{"choices":[{"delta":{"content":"x"},"finish_reason":null}]}', false],
    ['{"choices":[{"delta":{"content":"x"},"finish_reason": null}]}', false],
    ['{"choices":[{"delta":{},"finish_reason":', false],
    ['{"choices":[{"delta":{},"finish_reason"', false],
    ['{"choices":[{"delta":{"content":"hello"}}]}', false],
    ['', false],
    // A second occurrence is found after a null one (two events in one chunk).
    ['{"finish_reason":null}\n\n{"finish_reason":"stop"}', true],
    // The words inside content are escaped, so they are not a finish.
    ['{"choices":[{"delta":{"content":"\\"finish_reason\\":\\"stop\\""},"finish_reason":null}]}', false],
  ]
  for (const [text, expected] of cases) t.equal(hasFinishReason(Buffer.from(text)), expected, JSON.stringify(text))
})

/** Runs `relayStream` over a body that yields exactly these chunks, then ends. */
async function relayChunks(chunks: readonly string[]): Promise<{ out: string; ending: StreamEnding | undefined }> {
  const body = new PassThrough()
  let ending: StreamEnding | undefined
  const relay = new PassThrough()
  void relayStream(
    body as unknown as Parameters<typeof relayStream>[0],
    chunks.map((c) => Buffer.from(c)),
    relay,
    1000,
  ).ended.then((e) => (ending = e))
  body.end()
  const out: Buffer[] = []
  for await (const part of relay) out.push(part as Buffer)
  return { out: Buffer.concat(out).toString(), ending }
}

t.test('relayStream finds finish_reason and [DONE] wherever the chunk boundaries fall', async (t) => {
  const head = chunkEvent(MODEL, 0, 'Hel') + chunkEvent(MODEL, 1, 'lo')
  const finished = head + chunkEvent(MODEL, 2, '!', 'stop')
  const finishedLength = head + rawFinishEvent('length')
  const unfinished = head + chunkEvent(MODEL, 2, '!')
  const withDone = finished + DONE
  let failures = 0
  for (const [name, text, expectedOut, expectedEnding] of [
    ['finished, no [DONE]', finished, finished + DONE, 'done_added'],
    ['finished with "finish_reason": "length"', finishedLength, finishedLength + DONE, 'done_added'],
    ['finished with [DONE]', withDone, withDone, 'done'],
    ['finished with usage after it', finished + usageEvent, finished + usageEvent + DONE, 'done_added'],
  ] as const) {
    // Every two-way split, then every byte on its own.
    const splits: string[][] = []
    for (let at = 1; at < text.length; at++) splits.push([text.slice(0, at), text.slice(at)])
    splits.push([...text])
    for (const chunks of splits) {
      const { out, ending } = await relayChunks(chunks)
      if (out !== expectedOut || ending !== expectedEnding) {
        failures++
        if (failures < 5)
          t.fail(
            `${name}: split ${chunks.length === 2 ? `at ${chunks[0]!.length}` : 'per byte'} gave ${ending}: …${JSON.stringify(out.slice(-60))}`,
          )
      }
    }
    t.pass(`${name}: ${splits.length} splittings checked`)
  }
  t.equal(failures, 0, 'no splitting hides a finish_reason or a [DONE]')

  const { out, ending } = await relayChunks([...unfinished])
  t.equal(ending, 'cut', 'an unfinished stream that ends is a cut, even byte by byte')
  expectErrorTail(t, out, unfinished, 'stream_interrupted')
})

t.test('relayStream: a body that fails while chunks are still queued puts the error event after them', async (t) => {
  const body = new PassThrough()
  const event = (i: number) => chunkEvent(MODEL, i, `${i}-${'x'.repeat(500)}`)
  let ending: StreamEnding | undefined
  const relay = new PassThrough()
  relayStream(body as unknown as Parameters<typeof relayStream>[0], [Buffer.from(event(0))], relay, 1000).ended.then((e) => (ending = e))
  let sent = event(0)
  for (let i = 1; i < 100; i++) {
    body.write(event(i))
    sent += event(i)
  }
  await sleep(20) // nobody reads the relay: its readable side fills, later chunks wait on its writable side
  t.ok(relay.writableLength > 0, `chunks are queued on the writable side (${relay.writableLength} bytes)`)
  body.destroy(Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }))
  await sleep(20)
  const out: Buffer[] = []
  for await (const part of relay) out.push(part as Buffer)
  const text = Buffer.concat(out).toString()
  const errorAt = text.indexOf('data: {"error":')
  t.ok(errorAt > 0, 'an error event was written')
  t.ok(sent.startsWith(text.slice(0, errorAt)), 'everything before it is what the body gave, in order')
  expectErrorTail(t, text, text.slice(0, errorAt), 'stream_interrupted')
  t.equal(ending, 'cut')
})

t.test('relayStream: a body that stalls after a finish_reason ends with [DONE], after a [DONE] with nothing', async (t) => {
  const finished = chunkEvent(MODEL, 0, 'Hi', 'stop')
  for (const [sent, expected, expectedEnding] of [
    [finished, finished + DONE, 'done_added'],
    [finished + DONE, finished + DONE, 'done'],
  ] as const) {
    const body = new PassThrough()
    let ending: StreamEnding | undefined
    const relay = new PassThrough()
    relayStream(body as unknown as Parameters<typeof relayStream>[0], [Buffer.from(sent)], relay, 1000).ended.then((e) => (ending = e))
    body.destroy(Object.assign(new Error('Body Timeout Error'), { code: 'UND_ERR_BODY_TIMEOUT' }))
    const out: Buffer[] = []
    for await (const part of relay) out.push(part as Buffer)
    t.equal(Buffer.concat(out).toString(), expected)
    t.equal(ending, expectedEnding)
  }
})

// ─── Commit point: the first data event ─────────────────────────────────────────────────────────

t.test('200 + event-stream headers then silence: retried maxAttempts times, then a 504 error, never a 200', async (t) => {
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    openStream(res)
    await closed(res) // silent until the proxy gives up on it
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { upstream: { firstByteTimeoutMs: 300, streamIdleTimeoutMs: 10000 }, retry: { maxAttempts: 3 } },
  })
  const startedAt = performance.now()
  const res = await streamChat(proxy)
  const elapsedMs = performance.now() - startedAt
  await expectErrorShape(t, res, { status: 504, type: 'server_error', code: 'upstream_timeout' })
  t.equal(upstream.requests.length, 3, 'the upstream saw maxAttempts attempts')
  t.equal(res.headers['x-proxy-attempts'], '3')
  t.notOk(String(res.headers['content-type']).includes('event-stream'), "the upstream's stream headers were held back")
  t.ok(elapsedMs >= 3 * 300 - 30 && elapsedMs < 5000, `three first-event timeouts of 300 ms (${Math.round(elapsedMs)} ms)`)
})

t.test('a silent stream moves straight on to the configured fallback model', async (t) => {
  const events = [chunkEvent(FALLBACK, 0, 'Hi', 'stop')]
  const upstream = await startFakeUpstream(t, async (_req, res, recorded) => {
    const model = (JSON.parse(recorded.body.toString()) as { model: string }).model
    if (model === MODEL) {
      openStream(res)
      await closed(res)
    } else {
      await sendSse(res, events)
    }
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: {
      upstream: { firstByteTimeoutMs: 300, streamIdleTimeoutMs: 10000 },
      retry: { maxAttempts: 3 },
      fallbacks: { [MODEL]: [FALLBACK] },
    },
  })
  const startedAt = performance.now()
  const res = await streamChat(proxy)
  t.equal(res.statusCode, 200)
  t.equal(res.headers['x-proxy-model'], FALLBACK)
  t.equal(await res.body.text(), events.join('') + DONE, "the fallback's stream, byte-identical")
  const elapsedMs = performance.now() - startedAt
  const models = upstream.requests.map((r) => (JSON.parse(r.body.toString()) as { model: string }).model)
  t.same(models, [MODEL, FALLBACK], 'one attempt on the silent primary, then the fallback')
  t.ok(elapsedMs < 900, `not three timeouts first (${Math.round(elapsedMs)} ms)`)
})

t.test('a comment first, then the first event within the timeout: succeeds, and the comment is relayed', async (t) => {
  const comment = ': OPENROUTER PROCESSING\n\n'
  const first = chunkEvent(MODEL, 0, 'Hel')
  const rest = chunkEvent(MODEL, 1, 'lo', 'stop') + DONE
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    openStream(res)
    res.write(comment)
    await sleep(150)
    // The first event itself arrives in two writes, its blank line split too.
    await writeSlices(res, first, [10, first.length - 1], 20)
    res.end(rest)
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { upstream: { firstByteTimeoutMs: 300 }, retry: { maxAttempts: 1 } },
  })
  const res = await streamChat(proxy)
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/event-stream/)
  t.equal(await res.body.text(), comment + first + rest, 'comment and events, byte-identical')
  t.equal(upstream.requests.length, 1)
})

t.test('keep-alive comments alone do not commit the stream: still a first-event timeout', async (t) => {
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    openStream(res)
    while (!res.destroyed) {
      res.write(': OPENROUTER PROCESSING\n\n')
      await sleep(50)
    }
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { upstream: { firstByteTimeoutMs: 300, streamIdleTimeoutMs: 10000 }, retry: { maxAttempts: 2 } },
  })
  const res = await streamChat(proxy)
  await expectErrorShape(t, res, { status: 504, code: 'upstream_timeout' })
  t.equal(upstream.requests.length, 2)
})

// ─── After the commit ───────────────────────────────────────────────────────────────────────────

t.test('a stall longer than streamIdleTimeoutMs ends with one error event, then the stream closes', async (t) => {
  const sent = chunkEvent(MODEL, 0, 'Hel') + chunkEvent(MODEL, 1, 'lo')
  let stalledAt = 0
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    openStream(res)
    res.write(sent)
    stalledAt = performance.now()
    await closed(res)
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { upstream: { streamIdleTimeoutMs: 300 } } })
  const res = await streamChat(proxy)
  t.equal(res.statusCode, 200)
  const text = await res.body.text()
  const endedAfterMs = performance.now() - stalledAt
  expectErrorTail(t, text, sent, 'upstream_timeout')
  t.ok(endedAfterMs >= 250 && endedAfterMs < 3000, `ended at the idle timeout (${Math.round(endedAfterMs)} ms after the last byte)`)
  t.equal(await endingCount(proxy, 'stalled'), 1, 'stream_endings_total{ending="stalled"}')
  t.equal(upstream.requests.length, 1, 'no retry after the commit')
})

for (const [name, cut] of [
  ['FIN', (res: ServerResponse) => res.socket?.destroy()],
  ['RST', (res: ServerResponse) => res.socket?.resetAndDestroy()],
] as const) {
  t.test(`an upstream socket closed mid-stream (${name}) ends with one error event, counted as a cut`, async (t) => {
    const sent = chunkEvent(MODEL, 0, 'Hel') + chunkEvent(MODEL, 1, 'lo')
    const upstream = await startFakeUpstream(t, async (_req, res) => {
      openStream(res)
      res.write(sent)
      await sleep(50) // delivered before the cut
      cut(res)
    })
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const res = await streamChat(proxy)
    t.equal(res.statusCode, 200)
    expectErrorTail(t, await res.body.text(), sent, 'stream_interrupted')
    t.equal(await endingCount(proxy, 'cut'), 1, 'toprouter_proxy_stream_endings_total{ending="cut"} is 1')
    const metrics = await (await request(`${proxy.url}/metrics`)).body.text()
    t.match(metrics, /^toprouter_proxy_stream_endings_total\{model="google\/gemini-3\.5-flash",ending="cut"\} 1$/m, 'the exposition line')
    t.equal(upstream.requests.length, 1, 'no retry after the commit')
  })
}

t.test('an upstream body that ends cleanly without finish_reason or [DONE] ends with one error event', async (t) => {
  const sent = chunkEvent(MODEL, 0, 'Hel') + chunkEvent(MODEL, 1, 'lo')
  const upstream = await startFakeUpstream(t, (_req, res) => sendSse(res, [sent], 0, false))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const res = await streamChat(proxy)
  expectErrorTail(t, await res.body.text(), sent, 'stream_interrupted')
  t.equal(await endingCount(proxy, 'cut'), 1)
  t.equal(await endingCount(proxy, 'done_added'), 0)
})

t.test('the openai SDK raises an APIError on a cut stream instead of finishing silently', async (t) => {
  const sent = [chunkEvent(MODEL, 0, 'Hel'), chunkEvent(MODEL, 1, 'lo')]
  const consume = async (baseURL: string) => {
    const client = new OpenAI({ baseURL, apiKey: 'sk-test', maxRetries: 0 })
    const stream = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], stream: true })
    let content = ''
    try {
      for await (const chunk of stream) content += chunk.choices[0]?.delta.content ?? ''
    } catch (err: unknown) {
      return { content, err }
    }
    return { content, err: undefined }
  }

  t.test('control: straight at an upstream that ends early, the SDK finishes silently', async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res) => sendSse(res, sent, 0, false))
    const { content, err } = await consume(upstream.url)
    t.equal(content, 'Hello')
    t.equal(err, undefined, 'so the assertions below can fail')
  })

  for (const [name, script] of [
    ['a clean early end', (res: ServerResponse) => sendSse(res, sent, 0, false)],
    [
      'a socket reset',
      async (res: ServerResponse) => {
        openStream(res)
        for (const e of sent) res.write(e)
        await sleep(50)
        res.socket?.resetAndDestroy()
      },
    ],
    [
      'a stall',
      async (res: ServerResponse) => {
        openStream(res)
        for (const e of sent) res.write(e)
        await closed(res)
      },
    ],
  ] as const) {
    t.test(`through the proxy, ${name}`, async (t) => {
      const upstream = await startFakeUpstream(t, (_req, res) => script(res))
      const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { upstream: { streamIdleTimeoutMs: 300 } } })
      const { content, err } = await consume(proxy.url)
      t.equal(content, 'Hello', 'the deltas before the cut arrived')
      t.type(err, OpenAI.APIError, 'for await raises an APIError')
      if (!(err instanceof OpenAI.APIError)) return
      const body = err.error as Record<string, unknown>
      t.same(Object.keys(body).sort(), ['code', 'message', 'type'])
      t.equal(err.code, name === 'a stall' ? 'upstream_timeout' : 'stream_interrupted')
      t.equal(err.type, 'server_error')
    })
  }
})

t.test('a stream that finished without [DONE] gets exactly one appended', async (t) => {
  for (const [name, last] of [
    ['"finish_reason":"stop"', chunkEvent(MODEL, 1, 'lo', 'stop')],
    ['"finish_reason": "length" (a space after the colon)', rawFinishEvent('length')],
  ] as const) {
    t.test(name, async (t) => {
      const sent = chunkEvent(MODEL, 0, 'Hel') + last
      const upstream = await startFakeUpstream(t, (_req, res) => sendSse(res, [sent], 0, false))
      const proxy = await startProxy(t, { upstreamUrl: upstream.url })
      const res = await streamChat(proxy)
      const text = await res.body.text()
      t.equal(text, sent + DONE, 'the upstream bytes, then one data: [DONE]')
      t.equal(text.slice(-(last.length + DONE.length)), last + DONE, 'tail byte check')
      t.equal(await endingCount(proxy, 'done_added'), 1)
      t.equal(await endingCount(proxy, 'cut'), 0)
    })
  }
})

t.test('a stream with [DONE] is byte-identical, including malformed events and the usage chunk', async (t) => {
  t.test('plain', async (t) => {
    const events = [chunkEvent(MODEL, 0, 'Hel'), chunkEvent(MODEL, 1, 'lo', 'stop')]
    const upstream = await startFakeUpstream(t, (_req, res) => sendSse(res, events, 5))
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const res = await streamChat(proxy)
    t.equal(await res.body.text(), events.join('') + DONE)
    t.equal(await endingCount(proxy, 'done'), 1)
    t.equal(await endingCount(proxy, 'done_added'), 0)
  })

  t.test('malformed events pass untouched and the proxy keeps serving', async (t) => {
    const events = [
      'data: {not json\n\n',
      chunkEvent(MODEL, 0, 'Hel'),
      'data: {"choices":[{"delta":\n\n',
      'event: weird\ndata: ]]]\n\n',
      chunkEvent(MODEL, 1, 'lo', 'stop'),
    ]
    const upstream = await startFakeUpstream(t, (_req, res) => sendSse(res, events, 5))
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const res = await streamChat(proxy)
    t.equal(res.statusCode, 200)
    t.equal(Buffer.compare(Buffer.from(await res.body.text()), Buffer.from(events.join('') + DONE)), 0, 'byte comparison')
    const again = await streamChat(proxy)
    t.equal(again.statusCode, 200, 'a second stream afterwards is served')
    t.equal(await again.body.text(), events.join('') + DONE)
  })

  t.test('stream_options.include_usage and the final usage chunk pass through', async (t) => {
    const events = [chunkEvent(MODEL, 0, 'Hel'), chunkEvent(MODEL, 1, 'lo', 'stop'), usageEvent]
    const upstream = await startFakeUpstream(t, (_req, res) => sendSse(res, events, 5))
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const res = await streamChat(proxy, { stream_options: { include_usage: true } })
    const text = await res.body.text()
    t.equal(text, events.join('') + DONE, 'byte-identical')
    t.ok(text.endsWith(usageEvent + DONE), 'the usage chunk is the last before [DONE]')
    t.same((JSON.parse(upstream.requests[0]!.body.toString()) as { stream_options: unknown }).stream_options, { include_usage: true })
  })
})

t.test('finish_reason and [DONE] split across TCP writes are still detected', async (t) => {
  const first = chunkEvent(MODEL, 0, 'Hel')
  const last = chunkEvent(MODEL, 1, 'lo', 'stop')
  const key = '"finish_reason":"stop"'
  const keyAt = first.length + last.indexOf(key)

  t.test('"finish_reason":"stop" split twice, no [DONE]: exactly one [DONE] is appended, not an error', async (t) => {
    const text = first + last
    const upstream = await startFakeUpstream(t, async (_req, res) => {
      openStream(res)
      await writeSlices(res, text, [first.length, keyAt + 8, keyAt + '"finish_reason":'.length], 25)
      res.end()
    })
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const res = await streamChat(proxy)
    const body = await res.body.text()
    t.equal(body, text + DONE)
    t.equal(body.split(DONE).length - 1, 1, 'one [DONE]')
  })

  t.test('data: [DONE] split: byte-identical, nothing appended', async (t) => {
    const text = first + last + DONE
    const upstream = await startFakeUpstream(t, async (_req, res) => {
      openStream(res)
      const doneAt = first.length + last.length
      await writeSlices(res, text, [first.length, keyAt + 3, doneAt + 4, doneAt + 9], 25)
      res.end()
    })
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const res = await streamChat(proxy)
    t.equal(await res.body.text(), text)
  })

  t.test('the last event and [DONE] written byte by byte', async (t) => {
    const text = first + last + DONE
    const upstream = await startFakeUpstream(t, async (_req, res) => {
      openStream(res)
      const cuts: number[] = [first.length]
      for (let i = keyAt - 5; i < text.length; i++) cuts.push(i)
      await writeSlices(res, text, cuts, 2)
      res.end()
    })
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const res = await streamChat(proxy)
    t.equal(await res.body.text(), text)
    t.equal(await endingCount(proxy, 'done'), 1)
  })
})

t.test('after a finish, an upstream cut or stall is not an error: the stream ends as a finished one', async (t) => {
  const first = chunkEvent(MODEL, 0, 'Hel')
  const last = chunkEvent(MODEL, 1, 'lo', 'stop')
  const reset = (res: ServerResponse) => res.socket?.resetAndDestroy()
  const stall = (res: ServerResponse) => closed(res)
  for (const [name, sent, then, expected, ending] of [
    ['a socket reset after [DONE]: byte-identical, no error after it', first + last + DONE, reset, first + last + DONE, 'done'],
    ['a stall after [DONE]: byte-identical, no error after it', first + last + DONE, stall, first + last + DONE, 'done'],
    ['a socket reset after finish_reason, before [DONE]: one [DONE] is added', first + last, reset, first + last + DONE, 'done_added'],
    ['a stall after finish_reason, before [DONE]: one [DONE] is added', first + last, stall, first + last + DONE, 'done_added'],
  ] as const) {
    t.test(name, async (t) => {
      const upstream = await startFakeUpstream(t, async (_req, res) => {
        openStream(res)
        res.write(sent)
        await sleep(50)
        await then(res)
      })
      const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { upstream: { streamIdleTimeoutMs: 300 } } })
      const res = await streamChat(proxy)
      t.equal(await res.body.text(), expected)
      t.equal(await endingCount(proxy, ending), 1, `counted as ${ending}`)
      t.equal((await endingCount(proxy, 'cut')) + (await endingCount(proxy, 'stalled')), 0, 'not counted as a cut or a stall')
    })
  }
})

t.test('"data: [DONE]" inside a delta\'s text is not the end marker: an early end after it is still an error', async (t) => {
  const sent = chunkEvent(MODEL, 0, 'An SSE stream ends with data: [DONE] and') + chunkEvent(MODEL, 1, ' then data:[DONE]')
  for (const [name, script] of [
    ['a clean early end', (res: ServerResponse) => sendSse(res, [sent], 0, false)],
    [
      'a socket reset',
      async (res: ServerResponse) => {
        openStream(res)
        res.write(sent)
        await sleep(50)
        res.socket?.resetAndDestroy()
      },
    ],
  ] as const) {
    t.test(name, async (t) => {
      const upstream = await startFakeUpstream(t, (_req, res) => script(res))
      const proxy = await startProxy(t, { upstreamUrl: upstream.url })
      const res = await streamChat(proxy)
      expectErrorTail(t, await res.body.text(), sent, 'stream_interrupted')
      t.equal(await endingCount(proxy, 'cut'), 1)
    })
  }
})

// End to end the reset is only seen once the client drains the proxy (a paused socket reads no
// RST), so the queued-chunk ordering is pinned by the relayStream unit test above; this checks a
// slow client and megabytes in flight still get one error event, last.
t.test('a slow client and a cut after megabytes: one error event, still last', async (t) => {
  const event = chunkEvent(MODEL, 1, 'x'.repeat(1000))
  let sent = ''
  let cutDone: () => void = () => {}
  const cutHappened = new Promise<void>((resolve) => (cutDone = resolve))
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    openStream(res)
    res.write(chunkEvent(MODEL, 0, 'Hel'))
    sent += chunkEvent(MODEL, 0, 'Hel')
    await sleep(50)
    // Small events until every buffer between here and the client is full.
    for (let i = 0; i < 50000; i++) {
      sent += event
      if (!res.write(event)) {
        const drained = await Promise.race([
          new Promise<boolean>((resolve) => res.once('drain', () => resolve(true))),
          sleep(300).then(() => false),
        ])
        if (!drained) break
      }
    }
    res.socket?.resetAndDestroy()
    cutDone()
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const res = await streamChat(proxy)
  t.equal(res.statusCode, 200)
  await cutHappened
  await sleep(100)
  const text = await res.body.text()
  const errorAt = text.indexOf('data: {"error":')
  t.ok(errorAt > 0, 'an error event arrived')
  t.ok(sent.startsWith(text.slice(0, errorAt)), 'before it, a prefix of what the upstream sent')
  expectErrorTail(t, text, text.slice(0, errorAt), 'stream_interrupted')
  t.ok(sent.length > 1e6, `the upstream wrote ${(sent.length / 1e6).toFixed(1)} MB before it was blocked`)
})
