import { continuationSection } from './continuation.js'
import { fmt, ratio } from './format.js'
import { redisSection } from './redis.js'
import type { Report } from './report.js'
import { phaseTable, phaseTitle } from './tables.js'
import { teamSection } from './team.js'

export function markdown(report: Report): string {
  const m = report.machine
  const lines: string[] = [
    `# toprouter-proxy benchmark — ${report.mode} run`,
    '',
    `- when: ${report.timestamp} (took ${report.wallSeconds.toFixed(0)} s)`,
    `- machine: ${m.cpus} × ${m.cpuModel}, ${m.memoryGb} GB RAM, ${m.os}; load average at start ${m.loadAverage}`,
    `- software: node ${m.node}, fastify ${m.fastify}, undici ${m.undici}, @fastify/http-proxy ${m.httpProxy}, autocannon ${m.autocannon}`,
    `- proxy measured: commit ${m.commit}; dist/ snapshot fingerprint ${m.distFingerprint}`,
    `- CPU µs/req = the target process's utime+stime (/proc/<pid>/stat, ${report.plan.clockTicksPerSecond} ticks/s) over the phase ÷ responses completed; for \`direct\` it is the upstream's. Peak RSS = VmHWM.`,
    '- latency: autocannon phases (a, c, e) have 1 ms resolution; paced and unloaded phases (b, d) are timed with performance.now().',
    '',
  ]
  if (report.targets.length > 0) {
    for (const id of ['throughput', 'paced', 'stream', 'unloaded', 'models'] as const) {
      lines.push(`## ${phaseTitle(id, report.plan)}`, '', phaseTable(id, report.targets), '')
    }
    lines.push(
      '## Memory and logs',
      '',
      '| target | peak RSS MB (VmHWM) | RSS at end MB | log lines | warn/error log lines |',
      '|---|---:|---:|---:|---:|',
    )
    for (const target of report.targets) {
      lines.push(
        `| ${target.label} | ${fmt(target.peakRssMb, 1)} | ${fmt(target.rssAtEndMb, 1)} | ${target.log?.lines ?? '–'} | ${target.log?.warnOrWorse ?? '–'} |`,
      )
    }
    const proxy = report.targets.find((t) => t.label === 'proxy')
    const floor = report.targets.find((t) => t.label === 'floor')
    const direct = report.targets.find((t) => t.label === 'direct')
    if (proxy !== undefined && floor !== undefined)
      lines.push(`| **proxy ÷ floor** | ${ratio(proxy.peakRssMb, floor.peakRssMb)} | ${ratio(proxy.rssAtEndMb, floor.rssAtEndMb)} | | |`)
    if (proxy !== undefined && direct !== undefined)
      lines.push(`| **proxy ÷ direct** | ${ratio(proxy.peakRssMb, direct.peakRssMb)} | ${ratio(proxy.rssAtEndMb, direct.rssAtEndMb)} | | |`)
    for (const name of ['continuation', 'team', 'team-redis']) {
      const team = report.targets.find((t) => t.label === name)
      if (team !== undefined && proxy !== undefined)
        lines.push(`| **${name} ÷ proxy** | ${ratio(team.peakRssMb, proxy.peakRssMb)} | ${ratio(team.rssAtEndMb, proxy.rssAtEndMb)} | | |`)
    }
    lines.push('', "`direct`'s memory is the upstream process's (its VmHWM covers everything it served up to then).", '')
  }
  lines.push(...continuationSection(report.targets))
  if (report.teamVsLocal !== undefined) lines.push(...teamSection(report.teamVsLocal))
  if (report.teamRedisVsLocal !== undefined) lines.push(...teamSection(report.teamRedisVsLocal))
  if (report.redisCommands !== undefined) lines.push(...redisSection(report.redisCommands))
  if (report.memory !== undefined) {
    const mem = report.memory
    lines.push(
      `## Memory phase — ${mem.streams} concurrent streams through the proxy, events ${mem.chunkDelayMs} ms apart, held ${mem.holdS} s, then closed (config: ${mem.config})`,
      '',
      '| | proxy RSS MB | proxy sockets | upstream sockets | streams the upstream is writing | client streams with headers | client streams with an event |',
      '|---|---:|---:|---:|---:|---:|---:|',
      `| before | ${fmt(mem.before.rssMb, 1)} | ${mem.before.sockets} | ${mem.before.upstreamSockets} | ${mem.before.upstreamActiveStreams} | | |`,
      `| during (RSS at end of hold, counts = peak) | ${fmt(mem.during.rssMb, 1)} | ${mem.during.sockets} | ${mem.during.upstreamSockets} | ${mem.during.upstreamActiveStreams} | ${mem.during.streamsWithHeaders} | ${mem.during.streamsWithFirstEvent} |`,
      `| ${mem.after.secondsAfterClose} s after closing | ${fmt(mem.after.rssMb, 1)} | ${mem.after.sockets} | ${mem.after.upstreamSockets} | ${mem.after.upstreamActiveStreams} | | |`,
      '',
      `Peak proxy RSS (VmHWM) ${fmt(mem.peakRssMb, 1)} MB; stream errors before the close ${mem.streamErrors}; non-2xx ${mem.non2xx}; streams finished before the close ${mem.completedBeforeClose}. Sockets include the listening socket.`,
      '',
    )
  }
  if (report.problems.length > 0) lines.push('## Problems', '', ...report.problems.map((p) => `- ${p}`), '')
  else lines.push('No errors and no non-2xx responses in any phase.', '')
  return lines.join('\n')
}
