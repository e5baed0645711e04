import t from 'tap'
import { request } from 'undici'
import { chunkEvent, completion, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'

/**
 * ~200 requests at ~20/s through an upstream that fails ~20 % of attempts at random (seeded):
 * 429s, 500/502/503s, socket resets and stalled first bytes. With 3 attempts the theory is
 * 1 - 0.2^3 = 99.2 % success at ~1.25 attempts per request.
 */

const MODEL = 'google/gemini-3.5-flash'
const REQUESTS = 200
const FAILURE_RATE = 0.2

/** mulberry32: a small seeded PRNG, so a failing run can be replayed. */
function seeded(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let x = Math.imul(state ^ (state >>> 15), 1 | state)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

t.test('chaos: 20 % random upstream failures, ≥ 98.5 % client success, ≤ 1.35 attempts per request', async (t) => {
  const seed = Number(process.env.CHAOS_SEED ?? 20261124)
  const faults = seeded(seed)
  const kinds = { ok: 0, '429': 0, '500': 0, '502': 0, '503': 0, reset: 0, stall: 0 }
  const upstream = await startFakeUpstream(t, async (req, res, recorded) => {
    const stream = recorded.body.includes('"stream":true')
    if (faults() < FAILURE_RATE) {
      const pick = faults()
      if (pick < 0.2) {
        kinds['429'] += 1
        return sendJson(
          res,
          429,
          { error: { message: 'Rate limited', type: 'rate_limit_error', code: 'rate_limit_exceeded' } },
          { 'retry-after-ms': '20' },
        )
      }
      if (pick < 0.5) {
        const status = ([500, 502, 503] as const)[Math.floor(faults() * 3)] ?? 503
        kinds[String(status) as '500'] += 1
        return sendJson(res, status, { error: { message: 'upstream trouble' } })
      }
      if (pick < 0.75) {
        kinds.reset += 1
        return req.socket.destroy()
      }
      kinds.stall += 1
      if (stream) {
        res.writeHead(200, { 'content-type': 'text/event-stream' })
        res.flushHeaders()
      }
      await sleep(2000) // past firstByteTimeoutMs / responseTimeoutMs
      return res.destroy()
    }
    kinds.ok += 1
    if (!stream) return sendJson(res, 200, completion(MODEL))
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.write(chunkEvent(MODEL, 0, 'Hel'))
    res.write(chunkEvent(MODEL, 1, 'lo', 'stop'))
    res.end('data: [DONE]\n\n')
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    random: seeded(seed + 1),
    config: {
      upstream: { firstByteTimeoutMs: 250, responseTimeoutMs: 250 },
      retry: { maxAttempts: 3, baseDelayMs: 20, maxDelayMs: 200 },
    },
  })

  const outcomes: Array<Promise<boolean>> = []
  for (let i = 0; i < REQUESTS; i++) {
    const stream = i % 3 === 0
    outcomes.push(
      request(`${proxy.url}/chat/completions`, {
        method: 'POST',
        headers: { authorization: 'Bearer sk-chaos', 'content-type': 'application/json' },
        body: JSON.stringify({ model: MODEL, stream, messages: [{ role: 'user', content: `request ${i}` }] }),
      }).then(
        async (res) => {
          const text = await res.body.text()
          return res.statusCode === 200 && (!stream || (text.endsWith('data: [DONE]\n\n') && !text.includes('"error"')))
        },
        () => false,
      ),
    )
    await sleep(50) // ~20 requests per second
  }
  const results = await Promise.all(outcomes)
  const succeeded = results.filter(Boolean).length
  const attempts = upstream.requests.length
  const successRate = succeeded / REQUESTS
  t.comment(
    `seed ${seed}: ${succeeded}/${REQUESTS} succeeded, ${attempts} upstream attempts (${(attempts / REQUESTS).toFixed(2)} per request), faults ${JSON.stringify(kinds)}`,
  )
  t.ok(successRate >= 0.985, `client success ${(successRate * 100).toFixed(1)} % ≥ 98.5 %`)
  t.ok(attempts <= 1.35 * REQUESTS, `upstream attempts ${attempts} ≤ 1.35 × ${REQUESTS}`)
  t.ok(kinds.ok + kinds['429'] + kinds['500'] + kinds['502'] + kinds['503'] + kinds.reset + kinds.stall === attempts)
  t.ok(kinds['429'] > 0 && kinds.reset > 0 && kinds.stall > 0, 'every fault kind occurred')
})
