import asciichart from 'asciichart'
import * as vega from 'vega'
import * as vl from 'vega-lite'
import type { SlopeCheck } from './checks.js'
import type { TrafficCounts } from './traffic.js'

/** One row of the table: the proxy process at one moment of the load. */
export interface Sample {
  /** Seconds since the load started. */
  readonly t: number
  /** /proc/<pid>/status VmRSS. */
  readonly rssMb: number
  /** The probe's heapUsed at the sample and the lowest of its once-a-second readings in the window. */
  readonly heapUsedMb: number
  readonly heapUsedLowMb: number
  /** The probe's heapUsed right after the full GC it forces at the end of the window: the live heap. */
  readonly heapLiveMb: number
  readonly heapTotalMb: number
  readonly externalMb: number
  /** process.getActiveResourcesInfo().length, inside the proxy. */
  readonly handles: number
  /** Socket fds of the proxy, /proc/<pid>/fd. */
  readonly sockets: number
  readonly eldP99Ms: number
  readonly eldMaxMs: number
  /** The load at that moment (the driver's counts). */
  readonly openStreams: number
  readonly started: number
}

export interface UsageSummary {
  readonly usageRows: number
  /** The proxy's `request` log lines for the key on the chat route. */
  readonly loggedRequests: number
  readonly clientStarted: number
  readonly clientBodySent: number
  /** Rows by `ending` and status, e.g. `complete 200`. */
  readonly rowsByEnding: Record<string, number>
  readonly ok: boolean
}

export interface ModeResult {
  readonly mode: 'local' | 'team'
  readonly durationS: number
  readonly sampleS: number
  readonly peakStreams: number
  readonly nonStreamingPerS: number
  readonly before: { rssMb: number; sockets: number }
  readonly samples: Sample[]
  /** After the load ended and drained, plus the settle: the proxy and the upstream. */
  readonly after: {
    rssMb: number
    sockets: number
    handles: number
    heapUsedMb: number
    heapLiveMb: number
    upstreamActiveStreams: number
    upstreamConnections: number
    secondsAfterLoad: number
  }
  readonly peakRssMb: number
  readonly counts: TrafficCounts
  readonly faultsInjected: { reset: number; status503: number; cut: number }
  readonly slopes: SlopeCheck[]
  readonly usage?: UsageSummary
  readonly log: { lines: number; warn: number; error: number; fatal: number; sample: string[] }
  /** The proxy's `request` log lines for the chat route, any key: must equal the requests sent. */
  readonly loggedRequests: number
  readonly proxyExit: { code: number | null; signal: string | null; crashed: boolean }
  readonly problems: string[]
}

export interface SoakReport {
  readonly when: string
  readonly commit: string
  readonly node: string
  readonly cpus: number
  readonly options: Record<string, unknown>
  readonly modes: ModeResult[]
  readonly ok: boolean
}

const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : '—')
const f2 = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : '—')

export function sampleRow(s: Sample): string {
  return `| ${s.t} | ${f1(s.rssMb)} | ${f1(s.heapUsedMb)} | ${f1(s.heapLiveMb)} | ${s.handles} | ${s.sockets} | ${f1(s.eldP99Ms)} | ${f1(s.eldMaxMs)} | ${s.openStreams} | ${s.started} |`
}

export const SAMPLE_HEADER = [
  '| t s | RSS MB | heap used MB | live heap MB | handles | sockets | ELD p99 ms | ELD max ms | open streams | requests so far |',
  '| --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |',
]

/** RSS and heap used (MB), as a terminal chart: what the soak prints at every sample. */
export function terminalChart(samples: readonly Sample[]): string {
  if (samples.length < 2) return ''
  const last = samples.slice(-60)
  const chart = asciichart.plot([last.map((s) => s.rssMb), last.map((s) => s.heapUsedMb)], {
    height: 8,
    ...(process.stdout.isTTY ? { colors: [asciichart.blue, asciichart.green] } : {}),
    format: (x: number) => x.toFixed(0).padStart(6),
  })
  const legend = process.stdout.isTTY ? 'RSS MB (blue), heap used MB (green)' : 'RSS MB (upper line), heap used MB (lower line)'
  return `${chart}\n        ${legend}; one column per sample (the last 60)\n`
}

function modeMarkdown(m: ModeResult): string {
  const c = m.counts
  const lines: string[] = []
  lines.push(`## ${m.mode} mode${m.mode === 'team' ? ' (usage recorded, SQLite store)' : ''}`, '')
  lines.push(
    `${m.durationS} s of load, sampled every ${m.sampleS} s; ${m.peakStreams} streams open at peak (most seen: ${c.peakOpenStreams}), ` +
      `${m.nonStreamingPerS} non-streaming req/s. Before the load: RSS ${f1(m.before.rssMb)} MB, ${m.before.sockets} sockets. ` +
      `Peak RSS (VmHWM) ${f1(m.peakRssMb)} MB.`,
    '',
  )
  lines.push(...SAMPLE_HEADER, ...m.samples.map(sampleRow))
  lines.push(
    `| after (+${m.after.secondsAfterLoad} s) | ${f1(m.after.rssMb)} | ${f1(m.after.heapUsedMb)} | ${f1(m.after.heapLiveMb)} | ${m.after.handles} | ${m.after.sockets} | | | 0 | ${c.started} |`,
    '',
  )
  lines.push(
    `After the load: the upstream is still writing ${m.after.upstreamActiveStreams} streams and has ${m.after.upstreamConnections} connections open.`,
    '',
  )
  lines.push('### Growth over the second half (least squares)', '')
  lines.push('| series | points | level | slope /min | bound /min | |', '| --- | --: | --: | --: | --: | --- |')
  for (const s of m.slopes) {
    lines.push(
      `| ${s.label} (${s.unit}) | ${s.points} | ${f1(s.level)} | ${f2(s.slopePerMin)} | ${f2(s.boundPerMin)} | ${s.ok ? 'ok' : '**FAIL**'} |`,
    )
  }
  lines.push('', '### Requests', '')
  const statuses = Object.entries(c.statuses)
    .map(([status, n]) => `${status}: ${n}`)
    .join(', ')
  lines.push(
    '| | count |',
    '| --- | --: |',
    `| sent (first byte written) | ${c.started} |`,
    `| …logged by the proxy (its \`request\` lines, chat route, any key) | ${m.loggedRequests} |`,
    `| …streaming / non-streaming | ${c.byKind.stream} / ${c.byKind.nonStreaming} |`,
    `| body fully sent | ${c.bodySent} |`,
    `| got response headers | ${c.gotHeaders} |`,
    `| 2xx and complete, streaming / non-streaming | ${c.ok.stream} / ${c.ok.nonStreaming} |`,
    `| non-2xx (${statuses || 'none'}) | ${Object.values(c.statuses).reduce((a, b) => a + b, 0)} |`,
    `| streams cut after the headers (no \`[DONE]\`) | ${c.truncatedStreams} |`,
    `| connection errors before a response | ${c.connectionErrors} |`,
    `| clients that left: mid-body / before headers / after headers | ${c.aborted.midBody} / ${c.aborted.beforeHeaders} / ${c.aborted.afterHeaders} |`,
    `| hung (not over after the request timeout) | ${c.hung} |`,
    `| faults asked: reset / 503 / cut | ${c.faultsAsked.reset} / ${c.faultsAsked.status503} / ${c.faultsAsked.cut} |`,
    `| faults the upstream injected (attempts): reset / 503 / cut | ${m.faultsInjected.reset} / ${m.faultsInjected.status503} / ${m.faultsInjected.cut} |`,
    '',
  )
  if (m.usage !== undefined) {
    const u = m.usage
    lines.push('### Usage records', '')
    lines.push(
      `${u.usageRows} usage rows; the proxy logged ${u.loggedRequests} chat requests for the key; clients sent ${u.clientStarted}, ` +
        `${u.clientBodySent} of them with the whole body. Rule: rows = logged and body sent ≤ rows ≤ sent — ${u.ok ? 'ok' : '**FAIL**'}.`,
      '',
      `Rows by ending and status: ${Object.entries(u.rowsByEnding)
        .map(([k, n]) => `${k}: ${n}`)
        .join(', ')}.`,
      '',
    )
  }
  lines.push(
    `Proxy log: ${m.log.lines} lines, ${m.log.warn} warn, ${m.log.error} error, ${m.log.fatal} fatal. ` +
      `Proxy exit: ${m.proxyExit.crashed ? '**crashed**' : 'stopped by the soak'} (code ${String(m.proxyExit.code)}, signal ${String(m.proxyExit.signal)}).`,
    '',
  )
  lines.push(m.problems.length === 0 ? '**Passed.**' : `**Failed:**\n\n${m.problems.map((p) => `- ${p}`).join('\n')}`, '')
  return lines.join('\n')
}

export function markdown(report: SoakReport): string {
  const head = [
    '# Soak',
    '',
    `${report.when}, commit ${report.commit}, node ${report.node}, ${report.cpus} CPUs. ` +
      `Options: ${Object.entries(report.options)
        .map(([k, v]) => `${k} ${JSON.stringify(v)}`)
        .join(', ')}.`,
    '',
    `Result: **${report.ok ? 'passed' : 'FAILED'}**. See bench/README.md (Soak) for what is measured and the bounds.`,
    '',
  ]
  return `${[...head, ...report.modes.map(modeMarkdown)].join('\n')}\n`
}

/** The samples of one mode as an SVG: one panel per series over time, each with its own y scale. */
export async function svgOf(m: ModeResult): Promise<string> {
  const series: [string, (s: Sample) => number][] = [
    ['RSS MB', (s) => s.rssMb],
    ['heap used MB', (s) => s.heapUsedMb],
    ['live heap MB (after a full GC)', (s) => s.heapLiveMb],
    ['active handles', (s) => s.handles],
    ['sockets', (s) => s.sockets],
    ['event-loop delay p99 ms', (s) => s.eldP99Ms],
  ]
  const values = m.samples.flatMap((s) => series.map(([name, get]) => ({ t: s.t, series: name, value: get(s) })))
  const spec: vl.TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: `toprouter-proxy soak, ${m.mode} mode: ${m.durationS} s, ${m.peakStreams} streams at peak`,
    data: { values },
    facet: { row: { field: 'series', type: 'nominal', title: null, sort: series.map(([name]) => name) } },
    spec: {
      width: 640,
      height: 110,
      layer: [
        {
          mark: { type: 'line', point: true },
          encoding: {
            x: {
              field: 't',
              type: 'quantitative',
              title: 'seconds since the load started (dashed: the second half, which the slopes fit)',
            },
            y: { field: 'value', type: 'quantitative', title: null, scale: { zero: false } },
          },
        },
        {
          // One rule per panel, not one per sample.
          transform: [{ window: [{ op: 'row_number', as: 'row' }], groupby: [] }, { filter: 'datum.row === 1' }],
          mark: { type: 'rule', strokeDash: [4, 4], color: 'gray' },
          encoding: { x: { datum: m.durationS / 2, type: 'quantitative' } },
        },
      ],
    },
    resolve: { scale: { y: 'independent' } },
    config: { background: 'white' },
  }
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' })
  try {
    return await view.toSVG()
  } finally {
    view.finalize()
  }
}
