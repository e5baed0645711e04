import { connect } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { chunkEvent, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'

const MODEL = 'google/gemini-3.5-flash'
const limits = { server: { headersTimeoutMs: 300, requestTimeoutMs: 500 } }

/** Opens a raw connection, writes `first`, then stays silent; resolves with what the proxy said and when. */
function silentClient(url: string, first: string): Promise<{ reply: string; closedAfterMs: number }> {
  const { port } = new URL(url)
  const startedAt = performance.now()
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), '127.0.0.1', () => socket.write(first))
    let reply = ''
    socket.on('data', (chunk) => (reply += chunk.toString()))
    socket.on('close', () => resolve({ reply, closedAfterMs: performance.now() - startedAt }))
    socket.on('error', reject)
  })
}

t.test('a client that never finishes its headers is answered 408 and disconnected', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => res.end())
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: limits })
  const { reply, closedAfterMs } = await silentClient(proxy.url, 'POST /chat/completions HTTP/1.1\r\nHost: x\r\n')
  t.match(reply, /^HTTP\/1\.1 408/)
  t.match(reply, /"code":"request_timeout"/)
  t.ok(closedAfterMs < 2500, `closed after ${Math.round(closedAfterMs)} ms`)
  t.equal(upstream.requests.length, 0)
})

t.test('a client that never finishes its body is answered 408 and disconnected; nothing goes upstream', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => res.end())
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: limits })
  const { reply, closedAfterMs } = await silentClient(
    proxy.url,
    'POST /chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":',
  )
  t.match(reply, /^HTTP\/1\.1 408/)
  t.ok(closedAfterMs < 2500, `closed after ${Math.round(closedAfterMs)} ms`)
  t.equal(upstream.requests.length, 0)
})

t.test('a stream that lasts longer than every inbound limit is not cut', async (t) => {
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    for (let i = 0; i < 8; i++) {
      res.write(chunkEvent(MODEL, i, 'x', i === 7 ? 'stop' : null))
      await sleep(200)
    }
    res.end('data: [DONE]\n\n')
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: limits })
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: 'Bearer k', 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, stream: true, messages: [] }),
  })
  const text = await res.body.text()
  t.match(text, /data: \[DONE\]\n\n$/, 'the 1.6 s stream ran to its end')
  t.equal(text.split('chat.completion.chunk').length - 1, 8)
})
