import type { PhaseId, PhaseResult } from '../load/phase.js'
import type { TargetResult } from '../targets.js'
import type { UsageCheck } from '../team-target.js'
import { fmt } from './format.js'

/**
 * Team mode against local mode, from the same run: the `team` target (the proxy with team.enabled,
 * a gateway key, usage recorded) over the `proxy` target (default config), and the same for
 * `team-redis` (team mode with its limits in Redis) with its own goals. CPU figures are ratios,
 * latencies differences in ms; each with its goal when it has one. Goals are shown, not enforced
 * (as for the other targets: the machine is too noisy for a pass/fail on speed); a lost usage
 * record is enforced, by problems.ts, and so are team-redis's Redis commands per request.
 */

export interface TeamFigure {
  readonly figure: string
  readonly phase: PhaseId
  /** The `proxy` target's figure (µs or ms). */
  readonly local: number
  /** The team target's (`team` or `team-redis`). */
  readonly team: number
  /** `ratio`: team ÷ local; `addedMs`: team − local, in ms. */
  readonly kind: 'ratio' | 'addedMs'
  readonly value: number
  /** The largest value that meets the goal; null when the figure is shown for information. */
  readonly goal: number | null
  readonly met: boolean | null
}

export interface TeamComparison {
  /** The team target compared with `proxy`: `team` or `team-redis`. */
  readonly target: TeamTargetLabel
  readonly figures: TeamFigure[]
  /** Every figure with a goal meets it. */
  readonly goalsMet: boolean
  readonly usage: UsageCheck | undefined
}

export type TeamTargetLabel = 'team' | 'team-redis'

/** Goals (issue 8): team mode costs at most 15 % more CPU per request and adds at most 0.1 ms at the median. */
export const TEAM_CPU_RATIO_GOAL = 1.15
export const TEAM_ADDED_P50_GOAL_MS = 0.1
/** Goals for team mode with Redis-backed limits: ≤ 1.25 × local's CPU, ≤ +0.3 ms at the median (one loopback round trip). */
export const TEAM_REDIS_CPU_RATIO_GOAL = 1.25
export const TEAM_REDIS_ADDED_P50_GOAL_MS = 0.3

const GOALS: Record<TeamTargetLabel, { readonly cpuRatio: number; readonly addedP50Ms: number }> = {
  team: { cpuRatio: TEAM_CPU_RATIO_GOAL, addedP50Ms: TEAM_ADDED_P50_GOAL_MS },
  'team-redis': { cpuRatio: TEAM_REDIS_CPU_RATIO_GOAL, addedP50Ms: TEAM_REDIS_ADDED_P50_GOAL_MS },
}

interface FigureSpec {
  readonly figure: string
  readonly phase: PhaseId
  readonly value: (p: PhaseResult) => number | undefined
  readonly kind: 'ratio' | 'addedMs'
  /** Which of the target's goals applies; null when the figure is shown for information. */
  readonly goal: 'cpuRatio' | 'addedP50Ms' | null
}

const FIGURES: FigureSpec[] = [
  {
    figure: '(a) CPU µs per non-streaming request',
    phase: 'throughput',
    value: (p) => p.cpuUsPerReq,
    kind: 'ratio',
    goal: 'cpuRatio',
  },
  { figure: '(c) CPU µs per 20-event stream', phase: 'stream', value: (p) => p.cpuUsPerReq, kind: 'ratio', goal: 'cpuRatio' },
  { figure: '(d) unloaded p50 ms, non-streaming', phase: 'unloaded', value: (p) => p.p50Ms, kind: 'addedMs', goal: 'addedP50Ms' },
  {
    figure: '(d) unloaded p50 ms, stream first byte',
    phase: 'unloaded',
    value: (p) => p.extra.firstByteP50Ms,
    kind: 'addedMs',
    goal: 'addedP50Ms',
  },
  { figure: '(b) paced 1000 req/s p50 ms', phase: 'paced', value: (p) => p.p50Ms, kind: 'addedMs', goal: 'addedP50Ms' },
  { figure: '(a) req/s, non-streaming', phase: 'throughput', value: (p) => p.rps, kind: 'ratio', goal: null },
  { figure: '(b) CPU µs per request, paced', phase: 'paced', value: (p) => p.cpuUsPerReq, kind: 'ratio', goal: null },
  { figure: '(c) streams/s', phase: 'stream', value: (p) => p.rps, kind: 'ratio', goal: null },
  { figure: '(d) CPU µs per request, unloaded', phase: 'unloaded', value: (p) => p.cpuUsPerReq, kind: 'ratio', goal: null },
  { figure: '(d) CPU µs per stream, unloaded', phase: 'unloaded', value: (p) => p.extra.streamCpuUsPerStream, kind: 'ratio', goal: null },
  { figure: '(e) CPU µs per GET /models (filtered per key)', phase: 'models', value: (p) => p.cpuUsPerReq, kind: 'ratio', goal: null },
]

/** Undefined unless the run measured both `proxy` and `label` (`team` by default). */
export function teamComparison(targets: TargetResult[], label: TeamTargetLabel = 'team'): TeamComparison | undefined {
  const local = targets.find((t) => t.label === 'proxy')
  const team = targets.find((t) => t.label === label)
  if (local === undefined || team === undefined) return undefined
  const goals = GOALS[label]
  const figures: TeamFigure[] = []
  for (const figureSpec of FIGURES) {
    const spec = { ...figureSpec, goal: figureSpec.goal === null ? null : goals[figureSpec.goal] }
    const a = team.phases[spec.phase]
    const b = local.phases[spec.phase]
    if (a === undefined || b === undefined) continue
    const teamValue = spec.value(a) ?? Number.NaN
    const localValue = spec.value(b) ?? Number.NaN
    const value = spec.kind === 'ratio' ? teamValue / localValue : teamValue - localValue
    const met = spec.goal === null || !Number.isFinite(value) ? null : value <= spec.goal
    figures.push({
      figure: spec.figure,
      phase: spec.phase,
      local: localValue,
      team: teamValue,
      kind: spec.kind,
      value,
      goal: spec.goal,
      met,
    })
  }
  return { target: label, figures, goalsMet: figures.every((f) => f.met !== false), usage: team.usage }
}

const SECTION_HEADS: Record<TeamTargetLabel, readonly string[]> = {
  team: [
    '## Team mode ÷ local mode (`team` ÷ `proxy`, same run)',
    '',
    '`team`: the proxy with `team.enabled: true` on a fresh SQLite store, one gateway key (rpm and tpm far above the load), usage recorded; the load sends the key as its Bearer token.',
  ],
  'team-redis': [
    '## Team mode with Redis-backed limits ÷ local mode (`team-redis` ÷ `proxy`, same run)',
    '',
    "`team-redis`: `team` with `team.redisUrl` on its own redis-server and a `team.redisKeyPrefix` of its own, and a key that also has a concurrency limit (rpm, tpm and concurrency far above the load, but checked): each request runs the admission script in Redis, then one command settles its tokens and releases its slot (ioredis auto-pipelining: the commands of one event-loop turn go out in one write). The phase tables' **team-redis ÷ team** rows show what Redis adds to team mode.",
  ],
}

/** The comparison as a markdown section: the figures with their goals, then the usage check. */
export function teamSection(comparison: TeamComparison): string[] {
  const name = comparison.target
  const lines = [
    ...SECTION_HEADS[name],
    '',
    `| figure | local (\`proxy\`) | \`${name}\` | ${name} vs local | goal | met |`,
    '|---|---:|---:|---:|---:|---|',
  ]
  for (const f of comparison.figures) {
    const digits = f.kind === 'addedMs' ? 3 : 2
    const shown = f.kind === 'ratio' ? `${fmtRatio(f.value)}` : `${signed(f.value)} ms`
    const goal = f.goal === null ? '–' : f.kind === 'ratio' ? `≤ ${f.goal.toFixed(2)}×` : `≤ +${f.goal} ms`
    const met = f.met === null ? '' : f.met ? 'yes' : '**no**'
    lines.push(`| ${f.figure} | ${fmt(f.local, digits)} | ${fmt(f.team, digits)} | ${shown} | ${goal} | ${met} |`)
  }
  lines.push('')
  const u = comparison.usage
  if (u === undefined) lines.push(`**Usage check: not made** (the ${name} target has no usage figures).`, '')
  else
    lines.push(
      `Usage records: ${u.usageRows} rows in the store for key \`${u.keyName}\` (${u.keyPrefix}…, rpm ${u.rpm}, tpm ${u.tpm}${u.maxConcurrent > 0 ? `, max concurrent ${u.maxConcurrent}` : ''}); ` +
        `${u.answeredRequests} chat requests answered for it (the proxy's request log); ${u.measuredChatResponses} counted by the load in the measured phases (warm-ups not included); ` +
        `${u.completeRowsWithTokens} rows are 200 \`complete\` with tokens (${u.completeStreamRowsWithTokens} of them streams). ${u.ok ? '**ok**: every answered request has its record.' : '**USAGE RECORDS LOST**: rows ≠ requests answered.'}`,
      '',
    )
  return lines
}

function fmtRatio(value: number): string {
  return Number.isFinite(value) ? `${value.toFixed(2)}×` : '–'
}

function signed(value: number): string {
  if (!Number.isFinite(value)) return '–'
  return `${value >= 0 ? '+' : '−'}${Math.abs(value).toFixed(3)}`
}
