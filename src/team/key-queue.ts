import type { RequestSignal } from '../request-clock.js'
import type { Admission, AdmitRequest } from './limiter.js'

/**
 * The bounded FIFO wait per key, shared by the memory and the Redis limiters: a request refused
 * for rpm or concurrency waits its turn (at most `maxQueueWaitMs`, within its deadline) and tries
 * again when woken (a slot was freed on this replica), when the rpm window opens, or — for
 * concurrency — every `concurrencyRetryMs` (a slot freed on another replica wakes no one here).
 * A client that leaves leaves the queue at once. Refusals for tpm, and an unavailable limits
 * store, never wait.
 */

export interface KeyQueueOptions {
  readonly maxQueueWaitMs: number
  readonly now: () => number
  /** How often the head of a queue refused for concurrency tries again unwoken. @default never */
  readonly concurrencyRetryMs?: number
}

export interface KeyQueue {
  /** `tryAdmit` once, then, when refused for rpm or concurrency, in this key's queue. */
  admit(request: AdmitRequest, tryAdmit: (request: AdmitRequest) => Promise<Admission>): Promise<Admission>
  /** A slot of this key was freed: its queue's head tries again now. */
  wake(keyId: string): void
  queued(): number
}

/** A queue longer than this per key is a client misbehaving; later requests are refused at once. */
const MAX_QUEUED_PER_KEY = 256

interface Ticket {
  wake: () => void
}

type Waitable = Admission & { ok: false; limit: 'rpm' | 'concurrency' }

const waitable = (admission: Admission): admission is Waitable =>
  !admission.ok && (admission.limit === 'rpm' || admission.limit === 'concurrency')

export function createKeyQueue(options: KeyQueueOptions): KeyQueue {
  const { maxQueueWaitMs, now } = options
  const concurrencyRetryMs = options.concurrencyRetryMs ?? Number.POSITIVE_INFINITY
  const queues = new Map<string, Ticket[]>()
  let queuedCount = 0

  async function waitInQueue(
    request: AdmitRequest,
    refused: Waitable,
    tryAdmit: (request: AdmitRequest) => Promise<Admission>,
  ): Promise<Admission> {
    const waitUntil = Math.min(now() + maxQueueWaitMs, request.deadlineAtMs)
    const queue = queues.get(request.keyId) ?? []
    if (queue.length >= MAX_QUEUED_PER_KEY) return refused
    queues.set(request.keyId, queue)
    const ticket: Ticket = { wake: ignore }
    queue.push(ticket)
    queuedCount++
    let last: Waitable = refused
    try {
      for (;;) {
        // Only the head of the queue tries again; the others wait behind it, in order.
        const delayMs = last.limit === 'rpm' ? last.retryAfterMs : concurrencyRetryMs
        const leftMs = waitUntil - now()
        if (leftMs <= 0 || (queue[0] === ticket && delayMs > leftMs && last.limit === 'rpm')) return last
        const woken = await sleepUntilWoken(ticket, Math.min(delayMs, leftMs), request.signal)
        if (!woken) return { ok: false, limit: 'aborted' }
        if (queue[0] !== ticket) continue
        const next = await tryAdmit(request)
        if (!waitable(next)) return next
        last = next
      }
    } finally {
      queue.splice(queue.indexOf(ticket), 1)
      queuedCount--
      if (queue.length === 0) queues.delete(request.keyId)
      else queue[0]?.wake()
    }
  }

  return {
    async admit(request, tryAdmit) {
      const first = await tryAdmit(request)
      if (!waitable(first) || maxQueueWaitMs <= 0) return first
      if (request.signal.aborted) return { ok: false, limit: 'aborted' }
      return waitInQueue(request, first, tryAdmit)
    },
    wake: (keyId) => queues.get(keyId)?.[0]?.wake(),
    queued: () => queuedCount,
  }
}

/** Resolves true when woken or the time is up, false when the client left. */
function sleepUntilWoken(ticket: Ticket, ms: number, signal: RequestSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false)
  return new Promise((resolve) => {
    const done = (value: boolean) => {
      clearTimeout(timer)
      signal.off('abort', onAbort)
      ticket.wake = ignore
      resolve(value)
    }
    const onAbort = () => done(false)
    const timer = setTimeout(done, Math.max(1, Math.min(ms, 2 ** 31 - 1)), true)
    ticket.wake = () => done(true)
    signal.once('abort', onAbort)
  })
}

function ignore(): void {}
