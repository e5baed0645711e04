import type { RunMode } from '../cli.js'
import type { MemoryResult } from '../memory-phase.js'
import type { Connections, PhasePlan } from '../plan.js'
import type { TargetResult, UpstreamSizes } from '../targets.js'

/** Everything a run found; written as-is to the results JSON and rendered as the markdown. */
export interface Report {
  readonly timestamp: string
  readonly mode: RunMode
  readonly machine: Record<string, string | number>
  readonly plan: PhasePlan & { connections: Connections; clockTicksPerSecond: number }
  readonly upstream: UpstreamSizes
  readonly targets: TargetResult[]
  readonly memory?: MemoryResult
  readonly problems: string[]
  readonly wallSeconds: number
}
