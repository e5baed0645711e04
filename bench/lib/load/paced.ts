import { Pool } from 'undici'
import { CHAT_BODY, CHAT_PATH } from '../requests.js'
import { percentile, sortedOf } from './percentile.js'
import type { Measured } from './phase.js'

/**
 * Open-loop paced load: request i is due at start + i/rate and is sent then (or as soon as a slot
 * frees when `maxInFlight` are outstanding), whatever happened to earlier requests. Scheduling is
 * setTimeout for gaps ≥ 1 ms and setImmediate for shorter ones, firing every request that is due on
 * each turn, so sends stay evenly spaced instead of the per-second bursts autocannon -R produces.
 * Latency is measured from the actual send; `lag` is how late each send was against its slot.
 * `headers` are the chat POST's (they carry the client's key).
 */
export async function pacedLoad(
  baseUrl: string,
  rate: number,
  seconds: number,
  maxInFlight: number,
  headers: Readonly<Record<string, string>>,
): Promise<Measured> {
  const pool = new Pool(baseUrl, { connections: maxInFlight, pipelining: 1, keepAliveTimeout: 30_000 })
  const request = () =>
    pool.request({ method: 'POST', path: CHAT_PATH, headers, body: CHAT_BODY }).then(async (response) => {
      await response.body.dump()
      return response.statusCode
    })
  // Open the connections first, unmeasured.
  await Promise.allSettled(Array.from({ length: maxInFlight * 2 }, () => request()))

  const total = Math.max(1, Math.round(rate * seconds))
  const intervalMs = 1000 / rate
  const latencies = new Float64Array(total)
  const fromSlot = new Float64Array(total)
  const lags = new Float64Array(total)
  let sent = 0
  let completed = 0
  let inFlight = 0
  let errors = 0
  let non2xx = 0
  let cappedSends = 0
  let waitingForSlot = false
  const startedAt = performance.now() + 5

  await new Promise<void>((resolve) => {
    const fire = (now: number) => {
      const index = sent
      sent += 1
      inFlight += 1
      const slot = startedAt + index * intervalMs
      lags[index] = now - slot
      request()
        .then(
          (status) => {
            if (status < 200 || status > 299) non2xx += 1
          },
          () => {
            errors += 1
          },
        )
        .finally(() => {
          const end = performance.now()
          latencies[index] = end - now
          fromSlot[index] = end - slot
          inFlight -= 1
          completed += 1
          if (completed === total) resolve()
          else if (waitingForSlot) {
            waitingForSlot = false
            tick()
          }
        })
    }
    const tick = () => {
      const now = performance.now()
      const due = Math.min(total, Math.floor((now - startedAt) / intervalMs) + 1)
      while (sent < due && inFlight < maxInFlight) fire(now)
      if (sent >= total) return
      if (sent < due) {
        // At the in-flight cap: the next completion sends the overdue requests.
        cappedSends += 1
        waitingForSlot = true
        return
      }
      // Timers have 1 ms granularity: sleep with setTimeout unless the next slot is only a sliver
      // away, and only then turn with setImmediate (spinning would steal a core from the target).
      const wait = startedAt + sent * intervalMs - now
      if (wait > 0.2) setTimeout(tick, Math.max(1, Math.floor(wait)))
      else setImmediate(tick)
    }
    setTimeout(tick, 5)
  })
  const elapsedS = (performance.now() - startedAt) / 1000
  await pool.close()

  const sorted = sortedOf(latencies)
  const sortedFromSlot = sortedOf(fromSlot)
  const sortedLags = sortedOf(lags)
  return {
    requests: total,
    seconds: elapsedS,
    p50Ms: percentile(sorted, 50),
    p90Ms: percentile(sorted, 90),
    p99Ms: percentile(sorted, 99),
    errors,
    non2xx,
    extra: {
      targetRate: rate,
      sendLagP50Ms: percentile(sortedLags, 50),
      sendLagP99Ms: percentile(sortedLags, 99),
      fromSlotP50Ms: percentile(sortedFromSlot, 50),
      fromSlotP99Ms: percentile(sortedFromSlot, 99),
      cappedTurns: cappedSends,
    },
  }
}
