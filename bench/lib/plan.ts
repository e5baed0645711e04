/** How long (or how many requests) each phase runs, and its paced rate. Reported as the JSON's `plan`. */
export interface PhasePlan {
  readonly warmupS: number
  readonly throughputS: number
  readonly pacedS: number
  readonly pacedRate: number
  readonly streamS: number
  readonly unloadedN: number
  readonly unloadedStreamsN: number
  readonly modelsS: number
}

export interface Connections {
  readonly throughput: number
  readonly pacedMaxInFlight: number
  readonly stream: number
  readonly models: number
}

/**
 * `team` is the proxy in team mode (lib/team-target.ts), compared with `proxy`, the local mode;
 * `team-redis` is team mode with its limits in Redis (its own redis-server, lib/redis-server.ts);
 * `continuation` is the local mode with `streams.continuation.enabled` (no stream is cut: what
 * keeping the text costs a stream that needs no continuation).
 */
export type TargetName = 'direct' | 'floor' | 'proxy' | 'continuation' | 'team' | 'team-redis'

export interface BenchPlan {
  readonly phases: PhasePlan
  readonly connections: Connections
  /**
   * Measured one after another; `direct` twice in a full run, the second time to show drift; `team`
   * and `team-redis` right after `proxy`, so the modes are compared on the machine as it was a
   * minute or two apart.
   */
  readonly targets: readonly TargetName[]
  readonly autocannonSampleMs: number
  readonly pauseBetweenPhasesMs: number
}

const CONNECTIONS: Connections = { throughput: 64, pacedMaxInFlight: 64, stream: 32, models: 32 }

/** The smoke shrinks everything to a couple of seconds in total. */
export function benchPlan(options: { readonly smoke: boolean; readonly durationS: number; readonly warmupS: number }): BenchPlan {
  if (options.smoke) {
    return {
      phases: {
        warmupS: 0.2,
        throughputS: 0.3,
        pacedS: 0.3,
        pacedRate: 1000,
        streamS: 0.3,
        unloadedN: 40,
        unloadedStreamsN: 15,
        modelsS: 0.2,
      },
      connections: CONNECTIONS,
      targets: ['direct', 'proxy', 'continuation', 'team', 'team-redis'],
      // autocannon stops on its sampling tick, so fractional durations need a finer tick.
      autocannonSampleMs: 100,
      pauseBetweenPhasesMs: 50,
    }
  }
  return {
    phases: {
      warmupS: options.warmupS,
      throughputS: options.durationS,
      pacedS: options.durationS,
      pacedRate: 1000,
      streamS: options.durationS,
      unloadedN: 2000,
      unloadedStreamsN: 1000,
      modelsS: options.durationS / 2,
    },
    connections: CONNECTIONS,
    targets: ['direct', 'floor', 'proxy', 'continuation', 'team', 'team-redis', 'direct'],
    autocannonSampleMs: 1000,
    pauseBetweenPhasesMs: 500,
  }
}
