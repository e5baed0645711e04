import type { RunMode } from '../cli.js'
import type { MemoryResult } from '../memory-phase.js'
import type { Connections, PhasePlan } from '../plan.js'
import type { TargetResult, UpstreamSizes } from '../targets.js'
import type { RedisSummary } from './redis.js'
import type { TeamComparison } from './team.js'

/** Everything a run found; written as-is to the results JSON and rendered as the markdown. */
export interface Report {
  readonly timestamp: string
  readonly mode: RunMode
  readonly machine: Record<string, string | number>
  readonly plan: PhasePlan & { connections: Connections; clockTicksPerSecond: number }
  readonly upstream: UpstreamSizes
  readonly targets: TargetResult[]
  /** When the run measured both `proxy` and `team`: team mode's figures over local mode's, with goals. */
  readonly teamVsLocal?: TeamComparison
  /** The same for `team-redis` (team mode, limits in Redis), with its own goals. */
  readonly teamRedisVsLocal?: TeamComparison
  /** When the run measured `team-redis`: its Redis commands per request, by phase (also on its phases, as `redis`). */
  readonly redisCommands?: RedisSummary
  readonly memory?: MemoryResult
  readonly problems: string[]
  readonly wallSeconds: number
}
