import type { ServerResponse } from 'node:http'
import t from 'tap'
import { request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import { chunkEvent, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'

/**
 * Messages people read name durations as whole numbers: the configured timeout, never a measured
 * remainder such as `1998.4584000000032 ms`. Through the real proxy, one attempt each.
 */

const MODEL = 'google/gemini-3.5-flash'
const DECIMAL = /\d+\.\d+/

function chat(url: string, stream: boolean) {
  return request(`${url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: 'Bearer sk-client-key', 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, stream, messages: [{ role: 'user', content: 'hi' }] }),
  })
}

const closed = (res: ServerResponse) => new Promise<void>((resolve) => (res.destroyed ? resolve() : res.once('close', () => resolve())))

function openStream(res: ServerResponse): void {
  res.socket?.setNoDelay(true)
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
  res.flushHeaders()
}

/** Upstreams that never answer in time, each against the one timeout that applies to it. */
const SILENT_UPSTREAMS = [
  { name: 'a stream with headers and then no event', stream: true, timeout: { firstByteTimeoutMs: 300 }, sendsHeaders: true },
  { name: 'a stream whose upstream sends no headers', stream: true, timeout: { firstByteTimeoutMs: 300 }, sendsHeaders: false },
  { name: 'a non-streaming upstream that never sends headers', stream: false, timeout: { responseTimeoutMs: 300 }, sendsHeaders: false },
] as const

for (const silent of SILENT_UPSTREAMS) {
  t.test(`${silent.name}: 504 upstream_timeout naming "300 ms", no fraction`, async (t) => {
    const upstream = await startFakeUpstream(t, async (_req, res) => {
      if (silent.sendsHeaders) openStream(res)
      await closed(res)
    })
    const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { upstream: silent.timeout, retry: { maxAttempts: 1 } } })
    const error = await expectErrorShape(t, await chat(proxy.url, silent.stream), {
      status: 504,
      type: 'server_error',
      code: 'upstream_timeout',
    })
    t.match(error.message, /\b300 ms\b/, `names the timeout: ${error.message}`)
    t.notMatch(error.message, DECIMAL, 'no decimal number')
    t.equal(upstream.requests.length, 1, 'one attempt')
  })
}

t.test('a stream that stalls after its first event: the final error event names "300 ms", no fraction', async (t) => {
  const sent = chunkEvent(MODEL, 0, 'Hel')
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    openStream(res)
    res.write(sent)
    await closed(res)
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { upstream: { streamIdleTimeoutMs: 300 }, retry: { maxAttempts: 1 } },
  })
  const res = await chat(proxy.url, true)
  t.equal(res.statusCode, 200)
  const text = await res.body.text()
  t.equal(text.slice(0, sent.length), sent, 'the first event was relayed')
  const tail = text.slice(sent.length)
  t.match(tail, /^data: \{"error":[^\n]*\}\n\n$/, 'then one error event ends the stream')
  const { error } = JSON.parse(tail.slice('data: '.length)) as { error: { message: string; code: string } }
  t.equal(error.code, 'upstream_timeout')
  t.match(error.message, /\b300 ms\b/, `names the timeout: ${error.message}`)
  t.notMatch(error.message, DECIMAL, 'no decimal number')
})
