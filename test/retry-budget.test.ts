import t from 'tap'
import { createRetryBudget, type RetryBudgetOptions } from '../src/upstream/retry-budget.js'

const OPTIONS: RetryBudgetOptions = { budgetPercent: 10, budgetMinPerSecond: 5 }

/** A hand-driven clock, passed to the budget in place of performance.now(). */
function fakeClock(startMs = 0) {
  let nowMs = startMs
  return {
    now: () => nowMs,
    advance: (ms: number) => {
      nowMs += ms
    },
  }
}

function acquireAll(budget: ReturnType<typeof createRetryBudget>, limit = 10_000): number {
  let granted = 0
  while (granted < limit && budget.tryAcquireRetry()) granted++
  return granted
}

t.test('with no requests, the floor allows budgetMinPerSecond × 10 retries per 10 s window', async (t) => {
  const clock = fakeClock()
  const budget = createRetryBudget(OPTIONS, clock.now)
  t.equal(acquireAll(budget), 50)
  t.equal(budget.tryAcquireRetry(), false, 'the 51st is refused')
  t.same(budget.snapshot(), { requests: 0, retries: 50, allowed: 50 })
})

t.test('1000 requests allow 10 % of them plus the floor', async (t) => {
  const clock = fakeClock()
  const budget = createRetryBudget(OPTIONS, clock.now)
  for (let i = 0; i < 1000; i++) budget.recordRequest()
  t.same(budget.snapshot(), { requests: 1000, retries: 0, allowed: 150 })
  t.equal(acquireAll(budget), 150)
  t.same(budget.snapshot(), { requests: 1000, retries: 150, allowed: 150 })
})

t.test('refused retries are not counted', async (t) => {
  const clock = fakeClock()
  const budget = createRetryBudget({ budgetPercent: 10, budgetMinPerSecond: 0 }, clock.now)
  for (let i = 0; i < 20; i++) budget.recordRequest()
  t.equal(acquireAll(budget), 2)
  for (let i = 0; i < 5; i++) t.equal(budget.tryAcquireRetry(), false)
  t.equal(budget.snapshot().retries, 2)
})

t.test('retries expire as the window slides, one bucket (windowMs / 10) at a time', async (t) => {
  const clock = fakeClock(1_000_000)
  const budget = createRetryBudget(OPTIONS, clock.now)
  t.equal(acquireAll(budget), 50, 'all spent in the first bucket')
  clock.advance(9_999)
  t.equal(budget.tryAcquireRetry(), false, 'still inside the window: 9 buckets later')
  t.equal(budget.snapshot().retries, 50)
  clock.advance(1)
  t.same(budget.snapshot(), { requests: 0, retries: 0, allowed: 50 }, 'the first bucket has left the window')
  t.equal(acquireAll(budget), 50, 'the whole floor is available again')
})

t.test('the window slides gradually: only the oldest bucket expires', async (t) => {
  const clock = fakeClock()
  const budget = createRetryBudget(OPTIONS, clock.now)
  for (let i = 0; i < 100; i++) budget.recordRequest() // bucket 0
  clock.advance(5_000)
  for (let i = 0; i < 200; i++) budget.recordRequest() // bucket 5
  t.equal(acquireAll(budget, 30), 30) // bucket 5
  t.same(budget.snapshot(), { requests: 300, retries: 30, allowed: 80 })
  clock.advance(5_000) // bucket 10: bucket 0 leaves the window
  t.same(budget.snapshot(), { requests: 200, retries: 30, allowed: 70 })
  clock.advance(4_999) // bucket 14: bucket 5 is still in
  t.same(budget.snapshot(), { requests: 200, retries: 30, allowed: 70 })
  clock.advance(1) // bucket 15: bucket 5 leaves too
  t.same(budget.snapshot(), { requests: 0, retries: 0, allowed: 50 })
})

t.test('a time jump longer than the window resets everything', async (t) => {
  const clock = fakeClock()
  const budget = createRetryBudget(OPTIONS, clock.now)
  for (let i = 0; i < 1000; i++) budget.recordRequest()
  clock.advance(3_000)
  t.equal(acquireAll(budget), 150)
  clock.advance(3_600_000)
  t.same(budget.snapshot(), { requests: 0, retries: 0, allowed: 50 })
  t.equal(acquireAll(budget), 50)
  budget.recordRequest()
  t.same(budget.snapshot(), { requests: 1, retries: 50, allowed: 50.1 })
})

t.test('a jump of exactly one window and a clock going backwards', async (t) => {
  const clock = fakeClock(12_345)
  const budget = createRetryBudget(OPTIONS, clock.now)
  budget.recordRequest()
  clock.advance(10_000)
  t.equal(budget.snapshot().requests, 0, 'exactly one window later the old bucket is gone')
  budget.recordRequest()
  clock.advance(-5_000)
  budget.recordRequest()
  t.equal(budget.snapshot().requests, 2, 'a clock going back is treated as standing still')
})

t.test('windowMs is configurable; the floor scales with it', async (t) => {
  const clock = fakeClock()
  const budget = createRetryBudget({ budgetPercent: 50, budgetMinPerSecond: 2, windowMs: 1_000 }, clock.now)
  for (let i = 0; i < 10; i++) budget.recordRequest()
  t.same(budget.snapshot(), { requests: 10, retries: 0, allowed: 7 })
  t.equal(acquireAll(budget), 7)
  clock.advance(1_000)
  t.same(budget.snapshot(), { requests: 0, retries: 0, allowed: 2 })
})

t.test('a zero budget allows no retries at all', async (t) => {
  const budget = createRetryBudget({ budgetPercent: 0, budgetMinPerSecond: 0 }, fakeClock().now)
  for (let i = 0; i < 100; i++) budget.recordRequest()
  t.equal(budget.tryAcquireRetry(), false)
})

t.test('invalid options are refused at creation', async (t) => {
  t.throws(() => createRetryBudget({ ...OPTIONS, windowMs: 0 }), RangeError)
  t.throws(() => createRetryBudget({ ...OPTIONS, windowMs: Number.NaN }), RangeError)
  t.throws(() => createRetryBudget({ ...OPTIONS, budgetPercent: -1 }), RangeError)
  t.throws(() => createRetryBudget({ ...OPTIONS, budgetMinPerSecond: Number.POSITIVE_INFINITY }), RangeError)
})

t.test('the default clock is performance.now()', async (t) => {
  const budget = createRetryBudget(OPTIONS)
  budget.recordRequest()
  t.equal(budget.tryAcquireRetry(), true)
  t.same(budget.snapshot(), { requests: 1, retries: 1, allowed: 50.1 })
})
