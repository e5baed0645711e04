import t from 'tap'
import { benchPlan } from '../bench/lib/plan.js'
import { createBenchProgress, formatDuration } from '../bench/lib/progress.js'

/** The bench's time-left estimate, on a hand-moved clock: the plan's lengths, then what was measured. */

t.test('formatDuration: seconds with a decimal under 10 s, then whole seconds, then minutes', async (t) => {
  t.equal(formatDuration(2.345), '2.3 s')
  t.equal(formatDuration(-1), '0.0 s')
  t.equal(formatDuration(45.4), '45 s')
  t.equal(formatDuration(190), '3 min 10 s')
  t.equal(formatDuration(120.2), '2 min')
})

t.test('a full run: the plan at the start, then less as the steps pass, learning the untimed ones', async (t) => {
  let nowMs = 0
  const plan = benchPlan({ smoke: false, durationS: 10, warmupS: 3 })
  const progress = createBenchProgress(plan, undefined, true, () => nowMs)
  // 7 targets × (1.5 s start guess + (3+10+0.5) + (10+0.5) + (10+0.5) + (2000×0.5 + 1000×1.5 ms + 0.5 s) + 5) = 7 × 44 s
  t.equal(progress.targetStarts(), 'about 5 min 8 s left')
  nowMs += 1000
  // The start took 1 s, not 1.5: the six starts to come are re-estimated; (a) is still to run.
  t.equal(progress.phaseStarts('throughput'), 'about 5 min 4 s left')
  nowMs += 13_500
  t.equal(progress.phaseStarts('paced'), 'about 4 min 50 s left')
})

t.test('the memory phase counts too, and a memory-only run is only that', async (t) => {
  const plan = benchPlan({ smoke: true, durationS: 10, warmupS: 3 })
  const memory = { streams: 1000, holdS: 30, settleS: 40, configPath: undefined }
  const only = createBenchProgress(plan, memory, false, () => 0)
  t.equal(only.memoryStarts(), 'about 1 min 25 s left', 'hold 30 s + settle 40 s + 15 s to open and close the streams')
})
