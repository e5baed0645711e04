import type { Socket } from 'node:net'
import t from 'tap'
import { Agent, request } from 'undici'
import { chunkEvent, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'
import { until } from './helpers/until.js'

/**
 * Upstream connections after a burst of client aborts (issue 12, point 3; nodejs/undici#5845):
 * undici reconnects for every in-flight request it aborts, and without the proxy refusing (or
 * closing) those connections each aborted stream would leave an idle socket to the upstream until
 * its keep-alive timer (the upstream's hint, 3 s for Node's default 5 s) ran out. Counted at the
 * fake upstream.
 * Keep-alive reuse must stay: sequential requests share one connection.
 */

const MODEL = 'google/gemini-3.5-flash'
const STREAMS = 200
const auth = { authorization: 'Bearer sk-client-key', 'content-type': 'application/json' }

const chatBody = (stream: boolean) => JSON.stringify({ model: MODEL, stream, messages: [{ role: 'user', content: 'hi' }] })

t.test(
  `${STREAMS} streams aborted mid-stream leave a handful of upstream connections, not one each; keep-alive still reuses one`,
  async (t) => {
    let openStreams = 0
    const requestSockets: Socket[] = []
    const upstream = await startFakeUpstream(t, async (req, res, recorded) => {
      requestSockets.push(req.socket)
      if ((JSON.parse(recorded.body.toString()) as { stream: boolean }).stream !== true) {
        sendJson(res, 200, { id: 'c', object: 'chat.completion', model: MODEL, choices: [] })
        return
      }
      openStreams += 1
      res.once('close', () => (openStreams -= 1))
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      let index = 0
      while (!res.destroyed && index < 2000) {
        res.write(chunkEvent(MODEL, index, 'x'))
        index += 1
        await sleep(50)
      }
      res.end()
    })
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const clients = new Agent({ connections: STREAMS })
    t.teardown(() => clients.destroy())

    const controllers: AbortController[] = []
    await Promise.all(
      Array.from({ length: STREAMS }, async () => {
        const controller = new AbortController()
        controllers.push(controller)
        const response = await request(`${proxy.url}/v1/chat/completions`, {
          method: 'POST',
          headers: auth,
          body: chatBody(true),
          signal: controller.signal,
          dispatcher: clients,
        })
        response.body.on('error', () => {})
        await new Promise((resolve) => response.body.once('data', resolve))
      }),
    )
    t.equal(openStreams, STREAMS, 'every stream is open at the upstream, first event relayed')
    t.equal(upstream.sockets.size, STREAMS, 'one upstream connection per open stream')

    for (const controller of controllers) controller.abort()
    t.ok(await until(() => openStreams === 0, 2000), 'every upstream stream is cancelled')
    // undici reconnects for each aborted request a few milliseconds after the abort; 1 s on, well
    // inside the 3 s keep-alive such a connection would otherwise idle for, only closing it passes.
    await sleep(1000)
    t.ok(upstream.sockets.size <= 5, `upstream connections 1 s after the aborts: ${upstream.sockets.size} (≤ 5)`)
    t.equal(upstream.sockets.size + upstream.closedSockets, STREAMS, 'no connection is opened for an aborted request')

    // The pool still serves, and sequential requests reuse one keep-alive connection.
    const before = requestSockets.length
    for (let i = 0; i < 5; i++) {
      const response = await request(`${proxy.url}/v1/chat/completions`, { method: 'POST', headers: auth, body: chatBody(false) })
      t.equal(response.statusCode, 200)
      await response.body.text()
    }
    const sequential = new Set(requestSockets.slice(before))
    t.equal(sequential.size, 1, 'five sequential requests travel on one upstream connection')
    t.ok(upstream.sockets.size <= 6, 'no connection piles up')
  },
)
