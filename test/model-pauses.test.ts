import t from 'tap'
import { createModelPauseMap, NO_MODEL_PAUSES } from '../src/upstream/model-pauses.js'

/** The in-process pause map: a pause ends on time, the longest pause per model wins. */

t.test('a pause counts down and expires', async (t) => {
  let nowMs = 1_000_000
  const pauses = createModelPauseMap(() => nowMs)
  t.equal(pauses.pausedForMs('m'), 0, 'not paused')
  pauses.pause('m', nowMs + 2_000)
  t.equal(pauses.pausedForMs('m'), 2_000)
  t.equal(pauses.pausedForMs('other'), 0, 'per model')
  nowMs += 1_500
  t.equal(pauses.pausedForMs('m'), 500)
  nowMs += 500
  t.equal(pauses.pausedForMs('m'), 0, 'over at its end')
  pauses.pause('m', nowMs - 1)
  t.equal(pauses.pausedForMs('m'), 0, 'a pause already over is ignored')
})

t.test('the longest pause wins, in either order', async (t) => {
  const nowMs = 5_000
  const pauses = createModelPauseMap(() => nowMs)
  pauses.pause('m', nowMs + 3_000)
  pauses.pause('m', nowMs + 1_000)
  t.equal(pauses.pausedForMs('m'), 3_000, 'a shorter pause does not cut a longer one')
  pauses.pause('m', nowMs + 4_000)
  t.equal(pauses.pausedForMs('m'), 4_000, 'a longer one extends it')
})

t.test('NO_MODEL_PAUSES pauses nothing', async (t) => {
  NO_MODEL_PAUSES.pause('m', Date.now() + 60_000)
  t.equal(NO_MODEL_PAUSES.pausedForMs('m'), 0)
})
