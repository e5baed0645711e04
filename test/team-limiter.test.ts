import t from 'tap'
import { RequestSignal } from '../src/request-clock.js'
import { createKeyLimiter } from '../src/team/limiter.js'
import { ask, now } from './helpers/limits.js'

/**
 * A member key's limits, on rate-limiter-flexible's real memory limiters and real timers: rpm,
 * tpm (reserve, then settle), concurrency, and the bounded FIFO wait with its deadline and the
 * client leaving.
 */

t.test('rpm 5: the 6th request in the minute is refused with Retry-After and the key’s headers', async (t) => {
  const limiter = createKeyLimiter({ maxQueueWaitMs: 0, now })
  for (let i = 1; i <= 5; i++) {
    const admitted = await limiter.admit(ask({ rpm: 5 }))
    t.ok(admitted.ok, `request ${i} admitted`)
    if (admitted.ok) {
      t.equal(admitted.permit.headers['x-ratelimit-limit-requests'], '5')
      t.equal(admitted.permit.headers['x-ratelimit-remaining-requests'], String(5 - i))
      t.match(admitted.permit.headers['x-ratelimit-reset-requests'], /^\d+s$/)
      admitted.permit.release()
    }
  }
  const sixth = await limiter.admit(ask({ rpm: 5 }))
  t.equal(sixth.ok, false)
  if (!sixth.ok && 'retryAfterSeconds' in sixth) {
    t.equal(sixth.limit, 'rpm')
    t.ok(sixth.retryAfterSeconds >= 1 && sixth.retryAfterSeconds <= 60, `Retry-After ${sixth.retryAfterSeconds} s`)
    t.equal(sixth.headers['x-ratelimit-remaining-requests'], '0')
  }
  const other = await limiter.admit(ask({ rpm: 5 }, { keyId: 'key_b' }))
  t.ok(other.ok, 'another key has its own window')
})

t.test('a refused request does not count against the window', async (t) => {
  const limiter = createKeyLimiter({ maxQueueWaitMs: 0, now, windowSeconds: 1 })
  t.ok((await limiter.admit(ask({ rpm: 1 }))).ok)
  for (let i = 0; i < 5; i++) t.notOk((await limiter.admit(ask({ rpm: 1 }))).ok, `refusal ${i + 1}`)
  await new Promise((resolve) => setTimeout(resolve, 1100))
  const next = await limiter.admit(ask({ rpm: 1 }))
  t.ok(next.ok, 'the next window admits again: the refusals were not counted into it')
})

t.test('maxConcurrent 2: the 3rd simultaneous request is refused; a release frees a slot', async (t) => {
  const limiter = createKeyLimiter({ maxQueueWaitMs: 0, now })
  const results = await Promise.all([1, 2, 3].map(() => limiter.admit(ask({ maxConcurrent: 2, rpm: 100 }))))
  t.same(
    results.map((r) => r.ok),
    [true, true, false],
    'exactly two admitted even though all three arrived together',
  )
  const third = results[2]
  if (third !== undefined && !third.ok && third.limit !== 'aborted') t.equal(third.limit, 'concurrency')
  const first = results[0]
  if (first?.ok) first.permit.release()
  t.ok((await limiter.admit(ask({ maxConcurrent: 2 }))).ok, 'admitted once a slot is free')
})

t.test('tpm: the estimate is reserved, then settled to the real count', async (t) => {
  const limiter = createKeyLimiter({ maxQueueWaitMs: 0, now })
  const first = await limiter.admit(ask({ tpm: 100 }, { estimatedTokens: 60 }))
  t.ok(first.ok, '60 of 100 reserved')
  const second = await limiter.admit(ask({ tpm: 100 }, { estimatedTokens: 60 }))
  t.equal(second.ok, false, '60 more do not fit')
  if (!second.ok && second.limit !== 'aborted') t.equal(second.limit, 'tpm')
  if (first.ok) first.permit.settle(10)
  const third = await limiter.admit(ask({ tpm: 100 }, { estimatedTokens: 60 }))
  t.ok(third.ok, 'settled to 10, so 10 + 60 fit')
  if (third.ok) {
    t.equal(third.permit.headers['x-ratelimit-remaining-tokens'], '30')
    third.permit.settle(90)
  }
  const fourth = await limiter.admit(ask({ tpm: 100 }, { estimatedTokens: 1 }))
  t.equal(fourth.ok, false, 'a request that used more than it reserved is charged the difference')
})

t.test('the queue: over maxConcurrent a request waits its turn, in order', async (t) => {
  const limiter = createKeyLimiter({ maxQueueWaitMs: 2000, now })
  const holder = await limiter.admit(ask({ maxConcurrent: 1 }))
  t.ok(holder.ok)
  const order: number[] = []
  const startedAt = now()
  const waiting = [1, 2, 3].map((n) =>
    limiter.admit(ask({ maxConcurrent: 1 })).then((admission) => {
      order.push(n)
      if (admission.ok) setTimeout(() => admission.permit.release(), 20)
      return admission
    }),
  )
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(limiter.queued(), 3, 'three waiting')
  if (holder.ok) holder.permit.release()
  const admitted = await Promise.all(waiting)
  t.ok(
    admitted.every((a) => a.ok),
    'all admitted',
  )
  t.same(order, [1, 2, 3], 'first in, first out')
  t.ok(now() - startedAt >= 100, 'none before the slot was freed')
  t.equal(limiter.queued(), 0)
})

t.test('the queue: a client that leaves is out at once; nobody waits past maxQueueWaitMs or the deadline', async (t) => {
  const limiter = createKeyLimiter({ maxQueueWaitMs: 300, now })
  t.ok((await limiter.admit(ask({ maxConcurrent: 1 }))).ok)

  const signal = new RequestSignal()
  const leaving = limiter.admit(ask({ maxConcurrent: 1 }, { signal }))
  setTimeout(() => signal.abort('client_gone'), 50)
  let startedAt = now()
  const left = await leaving
  t.same(left, { ok: false, limit: 'aborted' }, 'the client left')
  t.ok(now() - startedAt < 200, `out at once (${Math.round(now() - startedAt)} ms)`)
  t.equal(limiter.queued(), 0, 'and out of the queue')

  startedAt = now()
  const timedOut = await limiter.admit(ask({ maxConcurrent: 1 }))
  const waitedMs = now() - startedAt
  t.equal(timedOut.ok, false)
  if (!timedOut.ok && timedOut.limit !== 'aborted') t.equal(timedOut.limit, 'concurrency')
  t.ok(waitedMs >= 290 && waitedMs < 800, `refused after maxQueueWaitMs (${Math.round(waitedMs)} ms)`)

  startedAt = now()
  const pastDeadline = await limiter.admit(ask({ maxConcurrent: 1 }, { deadlineAtMs: now() + 60 }))
  t.equal(pastDeadline.ok, false)
  t.ok(now() - startedAt < 250, `the deadline ends the wait first (${Math.round(now() - startedAt)} ms)`)
})

t.test('the queue over rpm: waits for the window when it refills in time, refuses at once when it does not', async (t) => {
  const limiter = createKeyLimiter({ maxQueueWaitMs: 2000, now, windowSeconds: 1 })
  t.ok((await limiter.admit(ask({ rpm: 1 }))).ok)
  const startedAt = now()
  const next = await limiter.admit(ask({ rpm: 1 }))
  t.ok(next.ok, 'admitted when the window refilled')
  t.ok(now() - startedAt >= 500, `after waiting for it (${Math.round(now() - startedAt)} ms)`)

  const slow = createKeyLimiter({ maxQueueWaitMs: 200, now, windowSeconds: 5 })
  t.ok((await slow.admit(ask({ rpm: 1 }))).ok)
  const quickStart = now()
  const refused = await slow.admit(ask({ rpm: 1 }))
  t.equal(refused.ok, false)
  t.ok(now() - quickStart < 100, 'a refill later than the allowed wait is refused without holding the client')
})
