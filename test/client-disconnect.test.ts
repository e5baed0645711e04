import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { chunkEvent, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy, type TestProxy } from './helpers/proxy.js'
import { until } from './helpers/until.js'

/**
 * SPEC § "Resilience semantics" → Client disconnect: when the client goes away the proxy aborts
 * the upstream request at once — mid-stream, before the upstream answered, before a stream's first
 * event — and cancels a pending backoff, so nothing more is sent upstream. "At once" is measured
 * on the fake upstream's side: its socket to the proxy must close within 100 ms of the client's
 * disconnect (same process, same clock).
 */

const MODEL = 'google/gemini-3.5-flash'
const auth = { authorization: 'Bearer sk-client-key' }
const ABORT_BOUND_MS = 100

function chatBody(stream: boolean): string {
  return JSON.stringify({ model: MODEL, stream, messages: [{ role: 'user', content: 'hi' }] })
}

/** 200 + text/event-stream headers on the wire now. */
function openStream(res: ServerResponse): void {
  res.socket?.setNoDelay(true)
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
  res.flushHeaders()
}

const closed = (res: ServerResponse) => new Promise<void>((resolve) => (res.destroyed ? resolve() : res.once('close', () => resolve())))

/** What the fake upstream saw of one request's connection. */
interface UpstreamSide {
  receivedAt: number | undefined
  socketClosedAt: number | undefined
  resClosedAt: number | undefined
  resDestroyed: boolean | undefined
  resFinished: boolean | undefined
}

function watch(req: IncomingMessage, res: ServerResponse, side: UpstreamSide): void {
  side.receivedAt = performance.now()
  req.socket.once('close', () => (side.socketClosedAt = performance.now()))
  res.once('close', () => {
    side.resClosedAt = performance.now()
    side.resDestroyed = res.destroyed
    side.resFinished = res.writableFinished
  })
}

const newSide = (): UpstreamSide => ({
  receivedAt: undefined,
  socketClosedAt: undefined,
  resClosedAt: undefined,
  resDestroyed: undefined,
  resFinished: undefined,
})

async function endingCount(proxy: TestProxy, ending: string): Promise<number> {
  const res = await request(`${proxy.url}/metrics`)
  const line = (await res.body.text())
    .split('\n')
    .find((l) => l.startsWith('toprouter_proxy_stream_endings_total{') && l.includes(`ending="${ending}"`))
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1))
}

/** Checks the upstream's socket closed after `goneAt` and within the bound. */
async function expectUpstreamClosedPromptly(t: Test, side: UpstreamSide, goneAt: number): Promise<void> {
  t.ok(await until(() => side.socketClosedAt !== undefined, 2000), 'the upstream socket closed')
  const lagMs = (side.socketClosedAt ?? Infinity) - goneAt
  t.ok(lagMs >= 0, 'not before the client left')
  t.ok(lagMs < ABORT_BOUND_MS, `the upstream socket closed ${lagMs.toFixed(1)} ms after the client left (bound ${ABORT_BOUND_MS} ms)`)
}

t.test('mid-stream: a client that disconnects after the first event aborts the upstream stream within 100 ms', async (t) => {
  for (const [name, keepSending, leaveAfterEvents] of [
    ['after the first event, the upstream between events', false, 1],
    ['after five events, the upstream still sending every 10 ms', true, 5],
  ] as const) {
    t.test(name, async (t) => {
      const side = newSide()
      let eventsWritten = 0
      const upstream = await startFakeUpstream(t, async (req, res) => {
        watch(req, res, side)
        openStream(res)
        res.write(chunkEvent(MODEL, 0, 'Hel'))
        eventsWritten++
        if (keepSending) {
          while (!res.destroyed && eventsWritten < 500) {
            await sleep(10)
            res.write(chunkEvent(MODEL, eventsWritten, 'lo'))
            eventsWritten++
          }
        }
        await closed(res)
      })
      const proxy = await startProxy(t, { upstreamUrl: upstream.url })

      // node:http with no agent: destroying the request destroys this one connection.
      const goneAt = await new Promise<number>((resolve, reject) => {
        const req = httpRequest(`${proxy.url}/chat/completions`, {
          method: 'POST',
          agent: false,
          headers: { ...auth, 'content-type': 'application/json' },
        })
        req.on('error', () => {})
        req.on('response', (res) => {
          if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`))
          let received = ''
          res.on('data', (chunk: Buffer) => {
            received += chunk.toString()
            if (received.split('\n\n').length - 1 < leaveAfterEvents) return
            const at = performance.now()
            req.destroy()
            resolve(at)
          })
        })
        req.end(chatBody(true))
      })

      await expectUpstreamClosedPromptly(t, side, goneAt)
      t.ok(await until(() => side.resClosedAt !== undefined, 500), "the upstream handler saw its response 'close'")
      t.equal(side.resDestroyed, true, 'res.destroyed')
      t.equal(side.resFinished, false, 'the upstream never got to finish its response')
      t.ok(eventsWritten >= leaveAfterEvents && eventsWritten < 500, `the upstream stopped sending (${eventsWritten} events written)`)
      t.equal(await endingCount(proxy, 'client_gone'), 1, 'stream_endings_total{ending="client_gone"}')
      t.equal(upstream.requests.length, 1, 'nothing was retried')
    })
  }
})

t.test('before the commit: a client abort closes the upstream connection within 100 ms and nothing is retried', async (t) => {
  const scenarios: Array<[string, boolean, (res: ServerResponse) => Promise<void>]> = [
    // The brief's case (b): a non-streaming call whose upstream has not answered yet.
    ['non-streaming, no upstream headers yet', false, (res) => closed(res)],
    [
      'non-streaming, upstream headers sent, body stalled',
      false,
      async (res) => {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.flushHeaders()
        res.write('{"id":"gen-123",')
        await closed(res)
      },
    ],
    ['streaming, no upstream headers yet', true, (res) => closed(res)],
    [
      'streaming, upstream headers sent, no first event yet',
      true,
      async (res) => {
        openStream(res)
        await closed(res)
      },
    ],
    [
      'streaming, only a keep-alive comment so far',
      true,
      async (res) => {
        openStream(res)
        res.write(': OPENROUTER PROCESSING\n\n')
        await closed(res)
      },
    ],
  ]
  for (const [name, stream, script] of scenarios) {
    t.test(name, async (t) => {
      const side = newSide()
      const upstream = await startFakeUpstream(t, async (req, res) => {
        watch(req, res, side)
        await script(res)
      })
      const proxy = await startProxy(t, { upstreamUrl: upstream.url })
      const controller = new AbortController()
      const outcome = request(`${proxy.url}/chat/completions`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: chatBody(stream),
        signal: controller.signal,
      })
        .then(
          (res) => res.body.text(),
          (err: unknown) => err,
        )
        .catch((err: unknown) => err)
      await sleep(200)
      t.equal(side.socketClosedAt, undefined, 'the upstream connection is still open before the abort')
      t.equal(upstream.requests.length, 1, 'the request reached the upstream')
      const goneAt = performance.now()
      controller.abort()
      const result = await outcome
      t.equal((result as { name?: unknown }).name, 'AbortError', 'the client saw its own abort')
      await expectUpstreamClosedPromptly(t, side, goneAt)
      t.equal(side.resDestroyed, true, "the upstream handler's response was destroyed")
      await sleep(150)
      t.equal(upstream.requests.length, 1, 'no further attempt')
    })
  }
})

t.test('during a backoff wait: a client abort cancels the pending retry — no further upstream attempt', { jobs: 2 }, async (t) => {
  const scenario = async (t: Test, stream: boolean) => {
    const upstream = await startFakeUpstream(t, (_req, res) =>
      sendJson(
        res,
        503,
        { error: { message: 'Service temporarily unavailable', type: 'server_error', code: 'service_unavailable' } },
        { 'retry-after': '2' },
      ),
    )
    const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { retry: { maxAttempts: 3 } } })
    const controller = new AbortController()
    const outcome = request(`${proxy.url}/chat/completions`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: chatBody(stream),
      signal: controller.signal,
    }).catch((err: unknown) => err)
    await sleep(200)
    const retrying = proxy.logLines().filter((line) => line.msg === 'retrying')
    t.equal(retrying.length, 1, 'the proxy is waiting to retry')
    t.ok(Number(retrying[0]?.delayMs) >= 1900, `for the upstream's Retry-After (${String(retrying[0]?.delayMs)} ms)`)
    t.equal(upstream.requests.length, 1, 'one attempt so far')
    controller.abort()
    t.equal(((await outcome) as { name?: unknown }).name, 'AbortError')
    await sleep(2500) // past the 2 s the retry would have waited
    t.equal(upstream.requests.length, 1, 'no further attempt after the client left')
    t.equal(proxy.logLines().filter((line) => line.msg === 'retrying').length, 1, 'no further retry scheduled')
  }
  // Side by side (jobs: 2), to keep the file short.
  t.test('non-streaming', (t) => scenario(t, false))
  t.test('streaming', (t) => scenario(t, true))
})

t.test('a request whose client left is still logged and counted', async (t) => {
  const requestLines = (proxy: TestProxy) => proxy.logLines().filter((line) => line.msg === 'request')
  const requestsTotal = async (proxy: TestProxy, status: string) => {
    const res = await request(`${proxy.url}/metrics`)
    return (await res.body.text())
      .split('\n')
      .some((l) => l.startsWith('toprouter_proxy_requests_total{') && l.includes(`status="${status}"`))
  }
  for (const [name, script] of [
    ['before the upstream answered', (res: ServerResponse) => closed(res)],
    [
      'during a Retry-After backoff',
      (res: ServerResponse) =>
        sendJson(res, 503, { error: { message: 'busy', type: 'server_error', code: 'service_unavailable' } }, { 'retry-after': '2' }),
    ],
  ] as const) {
    t.test(name, async (t) => {
      const upstream = await startFakeUpstream(t, (_req, res) => script(res))
      const proxy = await startProxy(t, { upstreamUrl: upstream.url })
      const controller = new AbortController()
      const outcome = request(`${proxy.url}/chat/completions`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: chatBody(false),
        signal: controller.signal,
      }).catch((err: unknown) => err)
      await sleep(200)
      controller.abort()
      await outcome
      t.ok(await until(() => requestLines(proxy).length === 1, 300), 'one request log line, soon after the client left')
      t.equal(requestLines(proxy)[0]?.status, 499, 'with status 499 client_closed_request')
      t.ok(await requestsTotal(proxy, '499'), 'toprouter_proxy_requests_total{status="499"}')
    })
  }
})
