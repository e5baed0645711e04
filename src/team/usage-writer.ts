import type { EventLog } from '../logging.js'
/**
 * Usage records leave the request path at once and reach the store in batches, every
 * `usageFlushMs` and at drain. When the store fails (locked, read-only, disk full, gone), requests
 * keep being served: records wait in a bounded queue, one log line marks each transition, and they
 * are written, oldest first, when the store is back.
 */

export interface UsageSink<T> {
  write(records: readonly T[]): Promise<void>
}

export interface UsageWriterOptions<T> {
  readonly sink: UsageSink<T>
  readonly flushMs: number
  /** Beyond this many waiting records the oldest are dropped, and counted. */
  readonly maxQueued: number
  /** Records per store write. @default 500 */
  readonly batchSize?: number
  readonly log: EventLog
}

export interface UsageWriter<T> {
  record(record: T): void
  /** Writes everything queued now; resolves false when the store refused (the records stay queued). */
  flush(): Promise<boolean>
  /** Stops the timer and makes a last flush (the drain). */
  close(): Promise<boolean>
  readonly queued: number
  readonly dropped: number
  readonly storeHealthy: boolean
}

export function createUsageWriter<T>(options: UsageWriterOptions<T>): UsageWriter<T> {
  const { sink, log, maxQueued } = options
  const batchSize = options.batchSize ?? 500
  let queue: T[] = []
  let dropped = 0
  let healthy = true
  let failures = 0
  let ticksToSkip = 0
  let flushing: Promise<boolean> | undefined
  // A failing store is retried less and less often (up to every 32 flush intervals): a write to a
  // locked SQLite file waits out its busy timeout on the event loop.
  const timer = setInterval(() => {
    if (ticksToSkip > 0) ticksToSkip--
    else void flush()
  }, options.flushMs)
  timer.unref()

  async function writeAll(): Promise<boolean> {
    while (queue.length > 0) {
      const batch = queue.slice(0, batchSize)
      try {
        await sink.write(batch)
      } catch (error: unknown) {
        failures++
        ticksToSkip = 2 ** Math.min(failures, 5) - 1
        if (healthy) {
          healthy = false
          log.warn({ err: error, queued: queue.length }, 'usage store unavailable; usage records wait in memory')
        }
        return false
      }
      queue = queue.slice(batch.length)
      failures = 0
      if (!healthy) {
        healthy = true
        log.info({ queued: queue.length, dropped }, 'usage store is back; writing the waiting usage records')
      }
    }
    return true
  }

  let flushSoon = false
  function flushNow(): void {
    flushSoon = false
    void flush()
  }

  function flush(): Promise<boolean> {
    flushing ??= writeAll().finally(() => {
      flushing = undefined
    })
    return flushing
  }

  return {
    record(record) {
      queue.push(record)
      if (queue.length > maxQueued) {
        queue.shift()
        dropped++
      }
      // A full batch is written now rather than at the next tick: under load, records held for a
      // whole flush interval outlive the young generation, and old-generation collections cost
      // more than the writes.
      if (healthy && !flushSoon && flushing === undefined && queue.length >= batchSize) {
        flushSoon = true
        setImmediate(flushNow)
      }
    },
    flush,
    async close() {
      clearInterval(timer)
      await flushing
      return flush()
    },
    get queued() {
      return queue.length
    },
    get dropped() {
      return dropped
    },
    get storeHealthy() {
      return healthy
    },
  }
}
