import type { MemoryResult } from '../memory-phase.js'
import type { TargetResult } from '../targets.js'
import { redisProblems } from './redis.js'

/**
 * Errors, non-2xx responses, warn/error log lines, streams that never flowed, (team targets) usage
 * rows that do not match the requests answered, and (team-redis) Redis commands per request outside
 * what the limiter sends (report/redis.ts); any of them fails the run.
 */
export function problemsOf(targets: TargetResult[], memory: MemoryResult | undefined): string[] {
  const problems: string[] = []
  for (const target of targets) {
    for (const result of Object.values(target.phases)) {
      if (result.errors > 0 || result.non2xx > 0) {
        problems.push(
          `${target.label} ${result.phase}: ${result.errors} errors, ${result.non2xx} non-2xx (${JSON.stringify(result.extra)})`,
        )
      }
    }
    if (target.log !== undefined && target.log.warnOrWorse > 0) {
      problems.push(`${target.label}: ${target.log.warnOrWorse} warn/error log lines, e.g. ${target.log.sample[0] ?? ''}`)
    }
    if (target.target === 'team-redis') problems.push(...redisProblems(target))
    if (target.target === 'team' || target.target === 'team-redis') {
      const usage = target.usage
      if (usage === undefined) problems.push(`${target.label}: no usage check was made`)
      else if (!usage.ok) {
        problems.push(
          `${target.label}: usage records lost — the store has ${usage.usageRows} usage rows for key ${usage.keyName} but the proxy answered ${usage.answeredRequests} chat requests for it (the load counted ${usage.measuredChatResponses} in the measured phases); store kept at ${target.keptStore ?? '?'}`,
        )
      }
    }
  }
  if (memory !== undefined) {
    if (memory.streamErrors > 0 || memory.non2xx > 0)
      problems.push(`memory phase: ${memory.streamErrors} stream errors, ${memory.non2xx} non-2xx before the close`)
    if (memory.during.streamsWithFirstEvent < memory.streams) {
      problems.push(
        `memory phase: only ${memory.during.streamsWithFirstEvent} of ${memory.streams} streams received an event during the ${memory.holdS} s hold`,
      )
    }
  }
  return problems
}
