import { EventEmitter } from 'node:events'

/**
 * The abort signal of one request: fired when the client leaves or the deadline passes. An
 * EventEmitter rather than an AbortController because it is created for every request and
 * AbortSignal (an EventTarget) costs several times more to create and listen to; undici accepts
 * either (`signal` may be "an EventEmitter or EventTarget").
 */
export class RequestSignal extends EventEmitter {
  aborted = false
  reason: unknown = undefined

  abort(reason?: unknown): void {
    if (this.aborted) return
    this.aborted = true
    this.reason = reason
    this.emit('abort')
  }
}

/** Waits `ms`, or rejects as soon as `signal` fires (a backoff wait ends when the client leaves). */
export function waitUnlessAborted(ms: number, signal: RequestSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new Error('aborted'))
      return
    }
    const onAbort = () => {
      clearTimeout(timer)
      reject(new Error('aborted'))
    }
    const timer = setTimeout(() => {
      signal.off('abort', onAbort)
      resolve()
    }, ms)
    signal.once('abort', onAbort)
  })
}
