import autocannon from 'autocannon'
import type { Measured } from './phase.js'

/** A closed-loop autocannon run; `sampleIntervalMs` is its sampling tick, on which it also stops. */
export function runAutocannon(options: autocannon.Options, sampleIntervalMs: number): Promise<autocannon.Result> {
  return new Promise((resolve, reject) => {
    autocannon({ pipelining: 1, timeout: 10, sampleInt: sampleIntervalMs, ...options }, (err, result) =>
      err === null ? resolve(result) : reject(err),
    )
  })
}

export function fromAutocannon(result: autocannon.Result): Measured {
  return {
    requests: result.requests.total,
    seconds: result.duration,
    p50Ms: result.latency.p50,
    p90Ms: result.latency.p90,
    p99Ms: result.latency.p99,
    errors: result.errors,
    non2xx: result.non2xx,
    extra: { timeouts: result.timeouts, resets: result.resets, sent: result.requests.sent },
  }
}
