import t from 'tap'
import { RollingWindow } from '../src/status/rolling-window.js'
import { createStatusRecorder } from '../src/status/status-recorder.js'

/**
 * The status page's rolling windows with an injected clock: buckets roll over and old ones are
 * forgotten, memory is fixed at creation, percentiles come from the bins; the recorder's bounds
 * (models, last errors, key names) and its UTC day.
 */

const T0 = Date.UTC(2026, 0, 1, 12, 0, 0)

t.test('a record lands in the bucket of its time; the ring forgets what is older than the window', async (t) => {
  const window = new RollingWindow({ bucketMs: 10_000, buckets: 6 })
  window.request(T0, false, 40, undefined)
  window.request(T0 + 5_000, true, 80, 30)
  window.count('retries', T0 + 5_000)
  window.count('fallbacks', T0 + 25_000)
  let snap = window.snapshot(T0 + 25_000)
  t.same(snap.series.requests, [0, 0, 0, 2, 0, 0], 'two requests three buckets ago, none since')
  t.same(snap.series.fallbacks, [0, 0, 0, 0, 0, 1])
  t.same(snap.lastMinute, { requests: 2, errors: 1, retries: 1, fallbacks: 1 })
  t.equal(snap.latencyMs.samples, 2)
  t.equal(snap.ttftMs.samples, 1)

  snap = window.snapshot(T0 + 60_000)
  t.same(snap.series.requests, [0, 0, 0, 0, 0, 0], 'a minute later the first bucket has rolled out')
  t.same(snap.series.fallbacks, [0, 1, 0, 0, 0, 0], 'the fallback, 35 s old, is still there')
  t.equal(snap.latencyMs.p50, null, 'no latency sample left')

  window.request(T0 + 3_600_000, false, 10, undefined)
  snap = window.snapshot(T0 + 3_600_000)
  t.same(snap.series.requests, [0, 0, 0, 0, 0, 1], 'an hour later: only the new request; the skipped ring was cleared once')
  t.same(snap.series.fallbacks, [0, 0, 0, 0, 0, 0])
})

t.test('memory is fixed at creation whatever the traffic', async (t) => {
  const window = new RollingWindow()
  const bytes = window.byteLength
  t.ok(bytes > 0 && bytes < 16_384, `${bytes} bytes per model window`)
  for (let i = 0; i < 100_000; i++) window.request(T0 + i * 37, i % 7 === 0, i % 5000, i % 300)
  t.equal(window.byteLength, bytes, 'unchanged after 100 000 records over an hour')
  t.equal(window.snapshot(T0 + 100_000 * 37).series.requests.length, 60)
})

t.test('p50 and p95 are read from the bins, interpolated', async (t) => {
  const window = new RollingWindow()
  for (let i = 0; i < 95; i++) window.request(T0, false, 90, 20)
  for (let i = 0; i < 5; i++) window.request(T0, false, 4000, 900)
  const { latencyMs, ttftMs } = window.snapshot(T0)
  t.ok(latencyMs.p50 !== null && latencyMs.p50 > 75 && latencyMs.p50 <= 100, `p50 ${latencyMs.p50} in the 75–100 ms bin`)
  t.ok(latencyMs.p95 !== null && latencyMs.p95 > 75 && latencyMs.p95 <= 100, `p95 ${latencyMs.p95}: the 95th of 100 is still 90 ms`)
  window.request(T0, false, 4000, 900)
  const after = window.snapshot(T0).latencyMs
  t.ok(after.p95 !== null && after.p95 > 3000 && after.p95 <= 5000, `one more slow one: p95 ${after.p95} in the 3–5 s bin`)
  t.ok(ttftMs.p50 !== null && ttftMs.p50 > 10 && ttftMs.p50 <= 25, `TTFT p50 ${ttftMs.p50}`)
})

t.test('a record is O(1): the time per record does not grow with the number recorded', async (t) => {
  const window = new RollingWindow()
  const timeFor = (n: number, start: number) => {
    const began = performance.now()
    for (let i = 0; i < n; i++) window.request(start + i, false, i % 2000, undefined)
    return (performance.now() - began) / n
  }
  timeFor(50_000, T0) // warm-up
  const small = timeFor(50_000, T0 + 1e7)
  const large = timeFor(500_000, T0 + 2e7)
  t.ok(large < small * 3 + 0.001, `per record: ${(small * 1e6).toFixed(0)} ns then ${(large * 1e6).toFixed(0)} ns`)
})

t.test('the recorder: models bounded by the label function, the last 20 errors, key names per UTC day', async (t) => {
  let now = T0
  const labelled = new Set<string>()
  const modelLabel = (model: string | undefined) => {
    if (model === undefined) return 'none'
    if (labelled.has(model) || labelled.size < 3) {
      labelled.add(model)
      return model
    }
    return 'other'
  }
  const recorder = createStatusRecorder({ modelLabel, now: () => now, team: true, maxKeyNames: 2 })
  const end = { route: '/chat/completions', code: undefined, ending: undefined, durationMs: 12, ttftMs: undefined }
  for (let i = 0; i < 10; i++) recorder.requestEnded({ ...end, model: `vendor/model-${i}`, status: 200 })
  t.same(
    recorder.snapshot({}).models.map((row) => row.model),
    ['other', 'vendor/model-0', 'vendor/model-1', 'vendor/model-2'],
    'three models then other',
  )

  for (let i = 0; i < 30; i++) {
    now += 1000
    recorder.requestEnded({ ...end, model: 'vendor/model-0', status: 502, code: `code_${i}` })
  }
  recorder.requestEnded({ ...end, model: 'vendor/model-1', status: 499 })
  recorder.requestEnded({ ...end, model: 'vendor/model-1', status: 200, ending: 'client_gone' })
  recorder.requestEnded({ ...end, model: 'vendor/model-1', status: 200, ending: 'cut' })
  recorder.requestEnded({ ...end, route: 'unmatched', model: undefined, status: 404, code: 'route_not_found' })
  recorder.requestEnded({ ...end, route: '/status.json', model: undefined, status: 401, code: 'invalid_api_key' })
  const errors = recorder.snapshot({}).lastErrors
  t.equal(errors.length, 20, 'twenty kept')
  t.same(
    errors[0],
    { time: new Date(now).toISOString(), model: 'vendor/model-1', status: 200, code: 'stream_interrupted' },
    'newest first: a cut stream; a client gone is not listed',
  )
  t.equal(errors[1]?.code, 'code_29')
  const row = recorder.snapshot({}).models.find((entry) => entry.model === 'vendor/model-1')
  t.same(row?.lastMinute, { requests: 4, errors: 1, retries: 0, fallbacks: 0 }, 'the client gone counted as requests, not errors')
  t.equal(errors[19]?.code, 'code_11')

  recorder.keyRequest('alice', { prompt: 5, completion: 2 })
  recorder.keyRequest('alice', { prompt: 5, completion: null })
  recorder.keyRequest('bob', { prompt: 1, completion: 1 })
  recorder.keyRequest('carol', { prompt: 1, completion: 1 })
  recorder.keyRequest('dave', { prompt: 1, completion: 1 })
  t.same(recorder.snapshot({}).keysToday, {
    day: '2026-01-01',
    keys: [
      { name: 'alice', requests: 2, promptTokens: 10, completionTokens: 2 },
      { name: 'other', requests: 2, promptTokens: 2, completionTokens: 2 },
      { name: 'bob', requests: 1, promptTokens: 1, completionTokens: 1 },
    ].sort((a, b) => b.requests - a.requests),
  })
  now = Date.UTC(2026, 0, 2, 0, 0, 1)
  t.same(recorder.snapshot({}).keysToday, { day: '2026-01-02', keys: [] }, 'a new UTC day starts from zero')
  recorder.keyRequest('erin', { prompt: 3, completion: 4 })
  t.same(recorder.snapshot({}).keysToday?.keys, [{ name: 'erin', requests: 1, promptTokens: 3, completionTokens: 4 }])
})

t.test('breaker states are read at snapshot time, models with a breaker but no traffic included', async (t) => {
  const recorder = createStatusRecorder({ modelLabel: (m) => m ?? 'none', now: () => T0, team: false })
  const snap = recorder.snapshot({ 'a/b': 'open', 'c/d': 'half_open' })
  t.same(
    snap.models.map((row) => [row.model, row.breaker]),
    [
      ['a/b', 'open'],
      ['c/d', 'half_open'],
    ],
  )
  t.equal(snap.keysToday, undefined, 'no keys outside team mode')
  t.equal(snap.bucketSeconds, 10)
  t.equal(snap.windowSeconds, 600)
})
