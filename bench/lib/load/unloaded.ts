import { Client } from 'undici'
import { CHAT_BODY, CHAT_PATH, STREAM_BODY } from '../requests.js'
import { percentile, sortedOf } from './percentile.js'
import type { Measured } from './phase.js'

/** One request at a time over one keep-alive connection: the latency the proxy adds when idle. */
export async function unloadedNonStreaming(baseUrl: string, count: number, headers: Readonly<Record<string, string>>): Promise<Measured> {
  const client = new Client(baseUrl, { pipelining: 1, keepAliveTimeout: 30_000 })
  let errors = 0
  let non2xx = 0
  const once = async (): Promise<void> => {
    const response = await client.request({ method: 'POST', path: CHAT_PATH, headers, body: CHAT_BODY })
    await response.body.dump()
    if (response.statusCode < 200 || response.statusCode > 299) non2xx += 1
  }
  for (let i = 0; i < 20; i++) await once().catch(() => undefined)
  non2xx = 0
  const latencies: number[] = []
  const startedAt = performance.now()
  for (let i = 0; i < count; i++) {
    const t0 = performance.now()
    try {
      await once()
    } catch {
      errors += 1
    }
    latencies.push(performance.now() - t0)
  }
  const seconds = (performance.now() - startedAt) / 1000
  await client.close()
  const sorted = sortedOf(latencies)
  return {
    requests: count,
    seconds,
    p50Ms: percentile(sorted, 50),
    p90Ms: percentile(sorted, 90),
    p99Ms: percentile(sorted, 99),
    errors,
    non2xx,
  }
}

/** One stream at a time: time to the first body chunk (the first SSE event) and to the end. */
export async function unloadedStreaming(baseUrl: string, count: number, headers: Readonly<Record<string, string>>): Promise<Measured> {
  const client = new Client(baseUrl, { pipelining: 1, keepAliveTimeout: 30_000 })
  let errors = 0
  let non2xx = 0
  let badStreams = 0
  const firstBytes: number[] = []
  const totals: number[] = []
  const once = async (record: boolean): Promise<void> => {
    const t0 = performance.now()
    const response = await client.request({ method: 'POST', path: CHAT_PATH, headers, body: STREAM_BODY })
    let first: number | undefined
    let text = ''
    for await (const chunk of response.body) {
      first ??= performance.now() - t0
      text += (chunk as Buffer).toString('latin1')
    }
    const total = performance.now() - t0
    if (response.statusCode < 200 || response.statusCode > 299) non2xx += 1
    else if (!text.endsWith('data: [DONE]\n\n') || !text.includes('"finish_reason":"stop"')) badStreams += 1
    if (record && first !== undefined) {
      firstBytes.push(first)
      totals.push(total)
    }
  }
  for (let i = 0; i < 10; i++) await once(false).catch(() => undefined)
  non2xx = 0
  badStreams = 0
  const startedAt = performance.now()
  for (let i = 0; i < count; i++) {
    try {
      await once(true)
    } catch {
      errors += 1
    }
  }
  const seconds = (performance.now() - startedAt) / 1000
  await client.close()
  const sortedFirst = sortedOf(firstBytes)
  const sortedTotal = sortedOf(totals)
  return {
    requests: count,
    seconds,
    p50Ms: percentile(sortedFirst, 50),
    p90Ms: percentile(sortedFirst, 90),
    p99Ms: percentile(sortedFirst, 99),
    errors: errors + badStreams,
    non2xx,
    extra: { streamTotalP50Ms: percentile(sortedTotal, 50), streamTotalP99Ms: percentile(sortedTotal, 99), badStreams },
  }
}
