import type { MemoryOptions } from './cli.js'
import type { PhaseId } from './load/phase.js'
import type { BenchPlan } from './plan.js'

/**
 * The run's time left, estimated from the plan: every step still to come (a target's start, its
 * phases, the pauses between them, then the memory phase) at its planned length. Steps the plan
 * gives no length to — starting and stopping a target, (d)'s fixed request counts — start from a
 * guess; every kind of step is then re-estimated from the ones already measured (the mean), so the
 * figure gets truer as the run goes. Printed after each target's and phase's start line.
 */

/** A step of the run; `setup` is a target's start (and stop of the previous one). */
type StepKind = 'setup' | PhaseId | 'memory'

interface Step {
  readonly kind: StepKind
  readonly estimateS: number
}

/** Guesses for the steps the plan does not time, before any has been measured. */
const SETUP_GUESS_S = 1.5
const UNLOADED_REQUEST_GUESS_MS = 0.5
const UNLOADED_STREAM_GUESS_MS = 1.5
/** The memory phase opens its streams and closes them around its hold and settle times. */
const MEMORY_OVERHEAD_GUESS_S = 15

export interface BenchProgress {
  /** A target starts (its process is about to be started): "about 3 min 40 s left". */
  targetStarts(): string
  /** One of the current target's phases starts: "about 3 min 10 s left". */
  phaseStarts(phase: PhaseId): string
  /** The memory phase starts. */
  memoryStarts(): string
}

export function createBenchProgress(
  plan: BenchPlan,
  memory: MemoryOptions | undefined,
  measureTargets: boolean,
  now: () => number = () => performance.now(),
): BenchProgress {
  const { phases } = plan
  const pauseS = plan.pauseBetweenPhasesMs / 1000
  const perTarget: Step[] = [
    { kind: 'setup', estimateS: SETUP_GUESS_S },
    { kind: 'throughput', estimateS: phases.warmupS + phases.throughputS + pauseS },
    { kind: 'paced', estimateS: phases.pacedS + pauseS },
    { kind: 'stream', estimateS: phases.streamS + pauseS },
    {
      kind: 'unloaded',
      estimateS: (phases.unloadedN * UNLOADED_REQUEST_GUESS_MS + phases.unloadedStreamsN * UNLOADED_STREAM_GUESS_MS) / 1000 + pauseS,
    },
    { kind: 'models', estimateS: phases.modelsS },
  ]
  const steps: Step[] = measureTargets ? plan.targets.flatMap(() => perTarget) : []
  if (memory !== undefined) steps.push({ kind: 'memory', estimateS: memory.holdS + memory.settleS + MEMORY_OVERHEAD_GUESS_S })

  // Each kind of step is re-estimated from the ones measured so far (a timed phase also costs its
  // process start-up and CPU readings, and the last phase of a target its stop).
  const measured = new Map<StepKind, number[]>()
  let next = 0
  let current: { kind: StepKind; startedAt: number } | undefined

  const estimateOf = (step: Step): number => {
    const seen = measured.get(step.kind)
    if (seen === undefined || seen.length === 0) return step.estimateS
    return seen.reduce((a, b) => a + b, 0) / seen.length
  }
  const advanceTo = (kind: StepKind): string => {
    const at = now()
    if (current !== undefined) {
      const list = measured.get(current.kind) ?? []
      list.push((at - current.startedAt) / 1000)
      measured.set(current.kind, list)
    }
    // Find the next step of this kind (a skipped step is simply passed over).
    while (next < steps.length && steps[next]?.kind !== kind) next += 1
    const left = steps.slice(next).reduce((sum, step) => sum + estimateOf(step), 0)
    current = { kind, startedAt: at }
    next += 1
    return `about ${formatDuration(left)} left`
  }

  return {
    targetStarts: () => advanceTo('setup'),
    phaseStarts: (phase) => advanceTo(phase),
    memoryStarts: () => advanceTo('memory'),
  }
}

/** "45 s", "3 min 10 s", "2 min"; under 10 s with one decimal, so a smoke run's seconds show. */
export function formatDuration(seconds: number): string {
  if (seconds < 10) return `${Math.max(0, seconds).toFixed(1)} s`
  const whole = Math.round(seconds)
  if (whole < 60) return `${whole} s`
  const minutes = Math.floor(whole / 60)
  const rest = whole % 60
  return rest === 0 ? `${minutes} min` : `${minutes} min ${rest} s`
}
