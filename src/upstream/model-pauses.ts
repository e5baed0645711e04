/**
 * Models the upstream asked us to leave alone: a 429 with pushback (Retry-After, or a spent
 * quota's reset) pauses its model until then, and until then the retrier answers for it without
 * an upstream call. Checking is an in-memory lookup; team mode (team/model-pauses.ts) shares the
 * pauses between replicas over Redis by feeding them into this same map.
 */
export interface ModelPauses {
  /** How long the model stays paused, in ms from now; 0 when it is not paused. */
  pausedForMs(model: string): number
  /** Pauses the model until `untilMs` (epoch ms); a longer pause already there wins. */
  pause(model: string, untilMs: number): void
}

/** Pauses kept at most; beyond it the expired ones go, then the oldest. */
const MAX_PAUSES = 10_000

/** The in-process pause map: one replica's memory, the longest pause per model wins. */
export function createModelPauseMap(wallClockNow: () => number = Date.now): ModelPauses {
  const until = new Map<string, number>()
  return {
    pausedForMs(model) {
      const end = until.get(model)
      if (end === undefined) return 0
      const left = end - wallClockNow()
      if (left > 0) return left
      until.delete(model)
      return 0
    },
    pause(model, untilMs) {
      const nowMs = wallClockNow()
      if (!(untilMs > nowMs)) return
      const current = until.get(model)
      if (current !== undefined && current >= untilMs) return
      until.delete(model)
      if (until.size >= MAX_PAUSES) {
        for (const [name, end] of until) if (end <= nowMs) until.delete(name)
        const oldest = until.keys().next()
        if (until.size >= MAX_PAUSES && !oldest.done) until.delete(oldest.value)
      }
      until.set(model, untilMs)
    },
  }
}

/** Pauses nothing: every request goes upstream. */
export const NO_MODEL_PAUSES: ModelPauses = Object.freeze({ pausedForMs: () => 0, pause: () => {} })
