/**
 * What fails a soak: a series that grows without bound. For each series, a least-squares line over
 * the second half of the samples (t ≥ duration / 2: the ramp is over and the process has warmed up);
 * its slope, in units per minute, must not be above
 *
 *   bound = max(rateFloor, rateShare × level) + max(jitterFloor, jitterShare × level) / window
 *
 * where `level` is the mean of the series over that half and `window` its length in minutes. The
 * first term is the growth allowed per minute for good; the second lets a healthy series move by its
 * ordinary sample-to-sample noise once over the window, which matters only for short runs (over the
 * 5-minute second half of a 10-minute run it adds a fifth of the jitter; over a 30-second run's 15 s
 * it dominates, so the CI run catches only gross growth).
 */

export type SeriesName = 'rssMb' | 'heapUsedMb' | 'handles' | 'sockets' | 'eldP99Ms'

export interface SlopeRule {
  readonly label: string
  readonly unit: string
  readonly rateFloor: number
  readonly rateShare: number
  readonly jitterFloor: number
  readonly jitterShare: number
}

export const SLOPE_RULES: Readonly<Record<SeriesName, SlopeRule>> = {
  rssMb: { label: 'RSS', unit: 'MB', rateFloor: 2, rateShare: 0.01, jitterFloor: 16, jitterShare: 0.15 },
  heapUsedMb: { label: 'live heap (after a full GC)', unit: 'MB', rateFloor: 1, rateShare: 0.01, jitterFloor: 8, jitterShare: 0.2 },
  handles: { label: 'active handles', unit: 'handles', rateFloor: 5, rateShare: 0.02, jitterFloor: 20, jitterShare: 0.1 },
  sockets: { label: 'sockets', unit: 'sockets', rateFloor: 5, rateShare: 0.02, jitterFloor: 20, jitterShare: 0.1 },
  eldP99Ms: { label: 'event-loop delay p99', unit: 'ms', rateFloor: 5, rateShare: 0.1, jitterFloor: 50, jitterShare: 1 },
}

export interface SlopeCheck {
  readonly series: SeriesName
  readonly label: string
  readonly unit: string
  readonly points: number
  readonly level: number
  readonly slopePerMin: number
  readonly boundPerMin: number
  readonly ok: boolean
}

/** Least squares: the slope of y over x. NaN with fewer than 2 distinct x. */
export function slope(xs: readonly number[], ys: readonly number[]): number {
  const n = xs.length
  if (n < 2) return Number.NaN
  const mx = xs.reduce((a, b) => a + b, 0) / n
  const my = ys.reduce((a, b) => a + b, 0) / n
  let sxy = 0
  let sxx = 0
  for (let i = 0; i < n; i += 1) {
    const dx = (xs[i] as number) - mx
    sxy += dx * ((ys[i] as number) - my)
    sxx += dx * dx
  }
  return sxx === 0 ? Number.NaN : sxy / sxx
}

/** The slope check of one series; `samples` are (t in seconds since the load started, value). Needs 3 points in the half. */
export function checkSlope(series: SeriesName, samples: readonly { t: number; value: number }[], durationS: number): SlopeCheck {
  const rule = SLOPE_RULES[series]
  const half = samples.filter((s) => s.t >= durationS / 2 && s.t <= durationS + 1 && Number.isFinite(s.value))
  const minutes = half.map((s) => s.t / 60)
  const values = half.map((s) => s.value)
  const level = values.length > 0 ? values.reduce((a, b) => a + b, 0) / values.length : Number.NaN
  const windowMin = minutes.length > 1 ? (minutes.at(-1) as number) - (minutes[0] as number) : Number.NaN
  const boundPerMin =
    Math.max(rule.rateFloor, rule.rateShare * level) + Math.max(rule.jitterFloor, rule.jitterShare * level) / Math.max(windowMin, 1e-9)
  const slopePerMin = slope(minutes, values)
  return {
    series,
    label: rule.label,
    unit: rule.unit,
    points: half.length,
    level,
    slopePerMin,
    boundPerMin,
    ok: half.length >= 3 && Number.isFinite(slopePerMin) && slopePerMin <= boundPerMin,
  }
}
