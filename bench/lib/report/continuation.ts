import type { PhaseId, PhaseResult } from '../load/phase.js'
import type { TargetResult } from '../targets.js'
import { fmt } from './format.js'

/**
 * Stream continuation's cost when no stream is cut (issue 10): `continuation` (the proxy with
 * `streams.continuation.enabled`) over `proxy` (disabled, the default), same run; and, disabled,
 * the proxy's stream CPU against the floor's, which must stay what it was before continuation.
 * Goals are shown, not enforced, like every speed goal here.
 */

/** Enabled costs at most 10 % more CPU per stream than disabled. */
export const CONTINUATION_STREAM_CPU_RATIO_GOAL = 1.1

interface Figure {
  readonly figure: string
  readonly of: 'continuation ÷ proxy' | 'proxy ÷ floor'
  readonly phase: PhaseId
  readonly value: (p: PhaseResult) => number | undefined
  readonly goal: number | null
}

const FIGURES: Figure[] = [
  {
    figure: '(c) CPU µs per 20-event stream',
    of: 'continuation ÷ proxy',
    phase: 'stream',
    value: (p) => p.cpuUsPerReq,
    goal: CONTINUATION_STREAM_CPU_RATIO_GOAL,
  },
  {
    figure: '(d) CPU µs per stream, unloaded',
    of: 'continuation ÷ proxy',
    phase: 'unloaded',
    value: (p) => p.extra.streamCpuUsPerStream,
    goal: null,
  },
  {
    figure: '(d) unloaded stream first byte p50 ms',
    of: 'continuation ÷ proxy',
    phase: 'unloaded',
    value: (p) => p.extra.firstByteP50Ms,
    goal: null,
  },
  {
    figure: '(a) CPU µs per non-streaming request',
    of: 'continuation ÷ proxy',
    phase: 'throughput',
    value: (p) => p.cpuUsPerReq,
    goal: null,
  },
  { figure: '(c) CPU µs per 20-event stream, disabled', of: 'proxy ÷ floor', phase: 'stream', value: (p) => p.cpuUsPerReq, goal: null },
]

export function continuationSection(targets: TargetResult[]): string[] {
  const byLabel = (label: string) => targets.find((t) => t.label === label)
  const continuation = byLabel('continuation')
  const proxy = byLabel('proxy')
  if (continuation === undefined || proxy === undefined) return []
  const floor = byLabel('floor')
  const lines = [
    '## Stream continuation enabled ÷ disabled (`continuation` ÷ `proxy`, same run)',
    '',
    "`continuation`: the proxy with `streams.continuation.enabled: true`; no stream is cut, so this is what keeping the forwarded text (every event parsed, whole events forwarded) costs a stream that needs no continuation. Disabled, the relay is unchanged: the last row is the proxy's stream CPU over the floor's.",
    '',
    '| figure | of | numerator | denominator | ratio | goal | met |',
    '|---|---|---:|---:|---:|---:|---|',
  ]
  for (const spec of FIGURES) {
    const [a, b] = spec.of === 'continuation ÷ proxy' ? [continuation, proxy] : [proxy, floor]
    const top = a?.phases[spec.phase]
    const bottom = b?.phases[spec.phase]
    if (top === undefined || bottom === undefined) continue
    const x = spec.value(top) ?? Number.NaN
    const y = spec.value(bottom) ?? Number.NaN
    const value = x / y
    const met = spec.goal === null || !Number.isFinite(value) ? '' : value <= spec.goal ? 'yes' : '**no**'
    const goal = spec.goal === null ? '–' : `≤ ${spec.goal.toFixed(2)}×`
    lines.push(`| ${spec.figure} | ${spec.of} | ${fmt(x)} | ${fmt(y)} | ${fmt(value, 2)}× | ${goal} | ${met} |`)
  }
  lines.push('')
  return lines
}
