/**
 * The demo's faults, one per scenario: which model id the scripted app asks for (fault-upstream.ts
 * picks its behaviour by that id), whether it streams, how many requests it sends, and what the
 * fault is, in words for the printed legend.
 */

export interface Scenario {
  /** Short name: the table's first column. */
  readonly name: string
  readonly model: string
  readonly stream: boolean
  /** Requests sent one after another (the outage sends several, so its breaker opens). */
  readonly requests: number
  /** The fault, as the legend prints it. */
  readonly fault: string
}

/** The fallback the demo's config gives `demo/down`. */
export const FALLBACK_MODEL = 'demo/healthy'

export const SCENARIOS: readonly Scenario[] = [
  {
    name: 'rate-limited',
    model: 'demo/rate-limited',
    stream: false,
    requests: 1,
    fault: '429 rate_limit_error with Retry-After: 1 (quota spent), then 200',
  },
  {
    name: 'burst-503',
    model: 'demo/burst-503',
    stream: false,
    requests: 1,
    fault: 'two 503s, each an HTML gateway page, then 200',
  },
  { name: 'reset', model: 'demo/reset', stream: false, requests: 1, fault: 'the connection reset before any header, then 200' },
  {
    name: 'silent',
    model: 'demo/silent',
    stream: true,
    requests: 1,
    fault: 'a stream that never starts (no header, no event), then one that does',
  },
  {
    name: 'cut-stream',
    model: 'demo/cut-stream',
    stream: true,
    requests: 1,
    fault: 'a stream that ends after 3 chunks: no finish_reason, no [DONE], no error',
  },
  {
    name: 'cut-continued',
    model: 'demo/cut-continued',
    stream: true,
    requests: 1,
    fault: 'a stream whose connection drops after 3 chunks (proxy: continuation on for it)',
  },
  {
    name: 'outage',
    model: 'demo/down',
    stream: false,
    requests: 5,
    fault: `every call 503 (5 requests); the proxy's config falls back to ${FALLBACK_MODEL}`,
  },
]
