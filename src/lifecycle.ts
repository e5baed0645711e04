import { failure } from './failures.js'
import type { RequestClock } from './request-clock.js'
import type { RelayedStream } from './streaming/sse.js'

/**
 * Whether the proxy is draining, and the work still in flight that the end of a drain must
 * finish honestly: requests still waiting for the upstream (answered 503 `service_unavailable`)
 * and streams being relayed (ended with a final `service_unavailable` error event).
 */
export class Lifecycle {
  draining = false
  /** Clocks of requests between their start and their commit; a clock removes itself on release. */
  readonly waiting = new Set<RequestClock>()
  private readonly streams = new Set<RelayedStream>()

  trackStream(stream: RelayedStream): void {
    this.streams.add(stream)
    void stream.ended.then(() => this.streams.delete(stream))
  }

  /** Ends everything still in flight; returns how many requests and streams were ended. */
  interruptInFlight(): { requests: number; streams: number } {
    const counts = { requests: this.waiting.size, streams: this.streams.size }
    for (const clock of [...this.waiting]) clock.signal.abort('draining')
    const drained = failure('draining', 'The proxy is shutting down; the stream ended before it finished')
    for (const stream of [...this.streams]) stream.interrupt(drained)
    return counts
  }
}
