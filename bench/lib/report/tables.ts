import type { PhaseId, PhaseResult } from '../load/phase.js'
import type { Connections, PhasePlan } from '../plan.js'
import type { TargetResult } from '../targets.js'
import { fmt, ratio } from './format.js'

/** The heading of each phase's table, naming the load the plan gave it. */
export function phaseTitle(id: PhaseId, plan: PhasePlan & { readonly connections: Connections }): string {
  const { connections } = plan
  switch (id) {
    case 'throughput':
      return `(a) non-streaming, max throughput — ${connections.throughput} connections, ${plan.throughputS} s after ${plan.warmupS} s warm-up`
    case 'paced':
      return `(b) paced ${plan.pacedRate} req/s, evenly spaced, open loop (≤ ${connections.pacedMaxInFlight} in flight), ${plan.pacedS} s — latency from send`
    case 'stream':
      return `(c) streaming (20 SSE events + [DONE]) — ${connections.stream} connections, ${plan.streamS} s; latency = whole stream`
    case 'unloaded':
      return `(d) unloaded — ${plan.unloadedN} requests then ${plan.unloadedStreamsN} streams, one at a time`
    case 'models':
      return `(e) GET /models (~6 KB) — ${connections.models} connections, ${plan.modelsS} s`
  }
}

interface Column {
  readonly title: string
  readonly value: (p: PhaseResult) => number | null | undefined
  readonly ratio: boolean
  readonly digits?: number
  /** autocannon's latencies are whole milliseconds; 0 means under 1 ms. */
  readonly wholeMs?: boolean
  readonly count?: boolean
}

const COUNT_COLUMNS: Column[] = [
  { title: 'errors', value: (p) => p.errors, ratio: false, count: true },
  { title: 'non-2xx', value: (p) => p.non2xx, ratio: false, count: true },
]

function cell(column: Column, p: PhaseResult): string {
  const value = column.value(p)
  if (column.count === true) return value === null || value === undefined ? '–' : String(value)
  if (column.wholeMs === true && value === 0) return '<1'
  if (column.wholeMs === true && value !== null && value !== undefined) return String(value)
  return fmt(value, column.digits)
}

const COLUMNS: Record<PhaseId, Column[]> = {
  throughput: [
    { title: 'req/s', value: (p) => p.rps, ratio: true },
    { title: 'p50 ms', value: (p) => p.p50Ms, ratio: true, wholeMs: true },
    { title: 'p99 ms', value: (p) => p.p99Ms, ratio: true, wholeMs: true },
    { title: 'CPU µs/req', value: (p) => p.cpuUsPerReq, ratio: true },
    ...COUNT_COLUMNS,
  ],
  paced: [
    { title: 'req/s', value: (p) => p.rps, ratio: true },
    { title: 'p50 ms', value: (p) => p.p50Ms, ratio: true, digits: 3 },
    { title: 'p90 ms', value: (p) => p.p90Ms, ratio: true, digits: 3 },
    { title: 'p99 ms', value: (p) => p.p99Ms, ratio: true, digits: 3 },
    { title: 'CPU µs/req', value: (p) => p.cpuUsPerReq, ratio: true },
    { title: 'send lag p99 ms', value: (p) => p.extra.sendLagP99Ms, ratio: false, digits: 3 },
    ...COUNT_COLUMNS,
  ],
  stream: [
    { title: 'streams/s', value: (p) => p.rps, ratio: true },
    { title: 'p50 ms', value: (p) => p.p50Ms, ratio: true, wholeMs: true },
    { title: 'p99 ms', value: (p) => p.p99Ms, ratio: true, wholeMs: true },
    { title: 'CPU µs/stream', value: (p) => p.cpuUsPerReq, ratio: true },
    ...COUNT_COLUMNS,
  ],
  unloaded: [
    { title: 'req/s', value: (p) => p.rps, ratio: true },
    { title: 'p50 ms', value: (p) => p.p50Ms, ratio: true, digits: 3 },
    { title: 'p99 ms', value: (p) => p.p99Ms, ratio: true, digits: 3 },
    { title: 'CPU µs/req', value: (p) => p.cpuUsPerReq, ratio: true },
    { title: 'stream first byte p50 ms', value: (p) => p.extra.firstByteP50Ms, ratio: true, digits: 3 },
    { title: 'stream first byte p99 ms', value: (p) => p.extra.firstByteP99Ms, ratio: true, digits: 3 },
    { title: 'CPU µs/stream', value: (p) => p.extra.streamCpuUsPerStream, ratio: true },
    ...COUNT_COLUMNS,
  ],
  models: [
    { title: 'req/s', value: (p) => p.rps, ratio: true },
    { title: 'p50 ms', value: (p) => p.p50Ms, ratio: true, wholeMs: true },
    { title: 'p99 ms', value: (p) => p.p99Ms, ratio: true, wholeMs: true },
    { title: 'CPU µs/req', value: (p) => p.cpuUsPerReq, ratio: true },
    ...COUNT_COLUMNS,
  ],
}

export function phaseTable(id: PhaseId, targets: TargetResult[]): string {
  const columns = COLUMNS[id]
  const rows: string[] = [`| target | ${columns.map((c) => c.title).join(' | ')} |`, `|---|${columns.map(() => '---:').join('|')}|`]
  for (const target of targets) {
    const p = target.phases[id]
    rows.push(`| ${target.label} | ${columns.map((c) => (p === undefined ? '–' : cell(c, p))).join(' | ')} |`)
  }
  const byName = (name: string) => targets.find((t) => t.label === name)?.phases[id]
  const ratioRow = (label: string, a: PhaseResult | undefined, b: PhaseResult | undefined) => {
    if (a === undefined || b === undefined) return
    rows.push(`| ${label} | ${columns.map((c) => (c.ratio ? ratio(c.value(a), c.value(b)) : '')).join(' | ')} |`)
  }
  ratioRow('**proxy ÷ floor**', byName('proxy'), byName('floor'))
  ratioRow('**proxy ÷ direct**', byName('proxy'), byName('direct'))
  ratioRow('**continuation ÷ proxy**', byName('continuation'), byName('proxy'))
  ratioRow('**team ÷ proxy**', byName('team'), byName('proxy'))
  ratioRow('**team-redis ÷ proxy**', byName('team-redis'), byName('proxy'))
  ratioRow('**team-redis ÷ team**', byName('team-redis'), byName('team'))
  ratioRow('drift: direct (end) ÷ direct', byName('direct (end)'), byName('direct'))
  return rows.join('\n')
}
