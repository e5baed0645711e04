import { setTimeout as sleep } from 'node:timers/promises'
import type { BenchPlan } from '../plan.js'
import type { BenchProgress } from '../progress.js'
import { CHAT_BODY, CHAT_PATH, type ClientHeaders, MODELS_PATH, STREAM_BODY } from '../requests.js'
import { fromAutocannon, runAutocannon } from './autocannon.js'
import { pacedLoad } from './paced.js'
import { type CpuWatch, measurePhase, type PhaseId, type PhaseResult } from './phase.js'
import { unloadedNonStreaming, unloadedStreaming } from './unloaded.js'

export type TargetPhases = Partial<Record<PhaseId, PhaseResult>>

/**
 * Phases (a) to (e) against one target at `url`, each charged to the processes in `watch`; every
 * request carries `headers` (the local key, or the team target's gateway key). Each phase's line
 * ends with the run's time left (`progress`).
 */
export async function measureTargetPhases(
  label: string,
  url: string,
  watch: CpuWatch,
  plan: BenchPlan,
  headers: ClientHeaders,
  progress: BenchProgress,
): Promise<TargetPhases> {
  const { phases: lengths, connections } = plan
  const phases: TargetPhases = {}
  const pause = () => sleep(plan.pauseBetweenPhasesMs)
  const cannon = (options: Parameters<typeof runAutocannon>[0]) => runAutocannon(options, plan.autocannonSampleMs)
  const chat = { url: url + CHAT_PATH, method: 'POST', headers: headers.chat }

  process.stdout.write(
    `  [${label}] (a) non-streaming throughput: ${lengths.warmupS} s warm-up, ${lengths.throughputS} s — ${progress.phaseStarts('throughput')}\n`,
  )
  if (lengths.warmupS > 0) await cannon({ ...chat, body: CHAT_BODY, connections: connections.throughput, duration: lengths.warmupS })
  phases.throughput = await measurePhase('throughput', watch, async () =>
    fromAutocannon(await cannon({ ...chat, body: CHAT_BODY, connections: connections.throughput, duration: lengths.throughputS })),
  )
  await pause()

  process.stdout.write(`  [${label}] (b) paced ${lengths.pacedRate} req/s, ${lengths.pacedS} s — ${progress.phaseStarts('paced')}\n`)
  phases.paced = await measurePhase('paced', watch, () =>
    pacedLoad(url, lengths.pacedRate, lengths.pacedS, connections.pacedMaxInFlight, headers.chat),
  )
  await pause()

  process.stdout.write(
    `  [${label}] (c) streaming, ${connections.stream} connections, ${lengths.streamS} s — ${progress.phaseStarts('stream')}\n`,
  )
  phases.stream = await measurePhase('stream', watch, async () =>
    fromAutocannon(await cannon({ ...chat, body: STREAM_BODY, connections: connections.stream, duration: lengths.streamS })),
  )
  await pause()

  process.stdout.write(
    `  [${label}] (d) unloaded: ${lengths.unloadedN} requests and ${lengths.unloadedStreamsN} streams, one at a time — ${progress.phaseStarts('unloaded')}\n`,
  )
  const unloaded = await measurePhase('unloaded', watch, () => unloadedNonStreaming(url, lengths.unloadedN, headers.chat))
  const unloadedStream = await measurePhase('unloaded', watch, () => unloadedStreaming(url, lengths.unloadedStreamsN, headers.chat))
  phases.unloaded = {
    ...unloaded,
    errors: unloaded.errors + unloadedStream.errors,
    non2xx: unloaded.non2xx + unloadedStream.non2xx,
    extra: {
      firstByteP50Ms: unloadedStream.p50Ms,
      firstByteP99Ms: unloadedStream.p99Ms,
      streamTotalP50Ms: unloadedStream.extra.streamTotalP50Ms ?? Number.NaN,
      streams: unloadedStream.requests,
      streamCpuUsPerStream: unloadedStream.cpuUsPerReq,
      badStreams: unloadedStream.extra.badStreams ?? 0,
    },
    ...(unloadedStream.redis === undefined ? {} : { redisStreams: unloadedStream.redis }),
  }
  await pause()

  process.stdout.write(
    `  [${label}] (e) GET /models, ${connections.models} connections, ${lengths.modelsS} s — ${progress.phaseStarts('models')}\n`,
  )
  phases.models = await measurePhase('models', watch, async () =>
    fromAutocannon(
      await cannon({
        url: url + MODELS_PATH,
        method: 'GET',
        headers: headers.get,
        connections: connections.models,
        duration: lengths.modelsS,
      }),
    ),
  )
  return phases
}
