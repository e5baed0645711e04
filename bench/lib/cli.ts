import { parseArgs } from 'node:util'

export type RunMode = 'full' | 'smoke' | 'memory-only'

export interface BenchOptions {
  readonly mode: RunMode
  /** Set by --smoke even when --memory-only decides the mode: it still shrinks the phase plan. */
  readonly smoke: boolean
  readonly durationS: number
  readonly warmupS: number
  readonly memoryPhase: boolean
  readonly memory: MemoryOptions
}

export interface MemoryOptions {
  readonly streams: number
  readonly holdS: number
  /** How long to wait after closing the streams before the last reading (BENCH_SETTLE_S). */
  readonly settleS: number
  /** A proxy config file for the memory phase; the default config when undefined. */
  readonly configPath: string | undefined
}

/** A flag with a value the bench cannot use; the driver reports it and exits 2. */
export class UsageError extends Error {}

/**
 * Flags: --duration-s N (10), --warmup-s N (3), --smoke, --memory, --memory-only,
 * --memory-config PATH, --memory-streams N (1000), --memory-hold-s N (30). See bench/README.md.
 * An unknown flag or a missing value throws parseArgs's own error.
 */
export function parseCli(args: string[], env: NodeJS.ProcessEnv): BenchOptions {
  const { values: flags } = parseArgs({
    args,
    options: {
      'duration-s': { type: 'string', default: '10' },
      'warmup-s': { type: 'string', default: '3' },
      smoke: { type: 'boolean', default: false },
      memory: { type: 'boolean', default: false },
      'memory-only': { type: 'boolean', default: false },
      'memory-config': { type: 'string' },
      'memory-streams': { type: 'string', default: '1000' },
      'memory-hold-s': { type: 'string', default: '30' },
    },
    strict: true,
  })
  const durationS = positive('duration-s', flags['duration-s'])
  const warmupS = positive('warmup-s', flags['warmup-s'], true)
  const streams = positive('memory-streams', flags['memory-streams'])
  const holdS = positive('memory-hold-s', flags['memory-hold-s'])
  return {
    mode: flags['memory-only'] ? 'memory-only' : flags.smoke ? 'smoke' : 'full',
    smoke: flags.smoke,
    durationS,
    warmupS,
    memoryPhase: flags.memory || flags['memory-only'],
    memory: { streams, holdS, settleS: Number(env.BENCH_SETTLE_S ?? 40), configPath: flags['memory-config'] },
  }
}

function positive(name: string, text: string, allowZero = false): number {
  const value = Number(text)
  if (!Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    throw new UsageError(`--${name} must be a ${allowZero ? 'non-negative' : 'positive'} number, found "${text}"`)
  }
  return value
}
