import { cpuSeconds } from '../proc-stats.js'
import type { RedisCommandCounter, RedisPhaseCounts } from '../redis-commands.js'

export type PhaseId = 'throughput' | 'paced' | 'stream' | 'unloaded' | 'models'

/** What a load generator reports for one phase, before the CPU figures are added. */
export interface Measured {
  readonly requests: number
  readonly seconds: number
  readonly rpsOverride?: number
  readonly p50Ms: number
  readonly p90Ms: number | null
  readonly p99Ms: number
  readonly errors: number
  readonly non2xx: number
  readonly extra?: Record<string, number>
}

export interface PhaseResult {
  readonly phase: PhaseId
  readonly seconds: number
  /** Responses completed (for streams: whole streams). */
  readonly requests: number
  readonly rps: number
  readonly p50Ms: number
  readonly p90Ms: number | null
  readonly p99Ms: number
  readonly errors: number
  readonly non2xx: number
  /** The target's utime+stime per completed request (for direct: the upstream's), µs. */
  readonly cpuUsPerReq: number
  /** The upstream's utime+stime per request in the same phase, µs (a sanity check: ~equal across targets). */
  readonly upstreamCpuUsPerReq: number
  /** CPU the load generator (this process) used per request, µs. */
  readonly driverCpuUsPerReq: number
  readonly extra: Record<string, number>
  /** team-redis only: the Redis commands of the phase and redis-server's CPU (for (d), its non-streaming part). */
  readonly redis?: RedisPhaseCounts
  /** team-redis's (d) only: the same for its one-at-a-time streams. */
  readonly redisStreams?: RedisPhaseCounts
}

/** The processes whose CPU a phase is charged to. */
export interface CpuWatch {
  /** The measured target (for direct: the upstream). */
  readonly targetPid: number
  readonly upstreamPid: number
  readonly ticksPerSecond: number
  /** team-redis only: its redis-server, whose commands and CPU are charged to the phase too. */
  readonly redis?: { readonly pid: number; readonly counter: RedisCommandCounter }
}

/** Runs one phase, bracketing it with CPU readings of the measured process, the upstream and this process. */
export async function measurePhase(id: PhaseId, watch: CpuWatch, run: () => Promise<Measured>): Promise<PhaseResult> {
  const cpuOf = (pid: number) => cpuSeconds(pid, watch.ticksPerSecond)
  // Redis is read first (it waits for the proxy to be quiet), so the CPU bracket holds only the load.
  const redisBefore = await watch.redis?.counter.snapshot()
  const cpuBefore = cpuOf(watch.targetPid)
  const upstreamBefore = cpuOf(watch.upstreamPid)
  const redisCpuBefore = watch.redis === undefined ? 0 : cpuOf(watch.redis.pid)
  const driverBefore = process.cpuUsage()
  const measured = await run()
  const driver = process.cpuUsage(driverBefore)
  const cpu = cpuOf(watch.targetPid) - cpuBefore
  const upstreamCpu = cpuOf(watch.upstreamPid) - upstreamBefore
  const redisCpu = watch.redis === undefined ? 0 : cpuOf(watch.redis.pid) - redisCpuBefore
  const perRequest = (seconds: number) => (measured.requests > 0 ? (seconds * 1e6) / measured.requests : Number.NaN)
  const redis =
    watch.redis === undefined || redisBefore === undefined
      ? undefined
      : { ...(await watch.redis.counter.since(redisBefore)), serverCpuUsPerReq: perRequest(redisCpu) }
  return {
    phase: id,
    seconds: measured.seconds,
    requests: measured.requests,
    rps: measured.rpsOverride ?? measured.requests / measured.seconds,
    p50Ms: measured.p50Ms,
    p90Ms: measured.p90Ms,
    p99Ms: measured.p99Ms,
    errors: measured.errors,
    non2xx: measured.non2xx,
    cpuUsPerReq: perRequest(cpu),
    upstreamCpuUsPerReq: perRequest(upstreamCpu),
    driverCpuUsPerReq: perRequest((driver.user + driver.system) / 1e6),
    extra: measured.extra ?? {},
    ...(redis === undefined ? {} : { redis }),
  }
}
