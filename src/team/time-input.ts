import { TeamError } from './errors.js'

/** `30d`, `12h`, `2w`: a span from now; the CLI's --expires counts forward, --since/--until back. */
const RELATIVE = /^(\d+)([hdw])$/
const UNIT_MS = { h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const
/** A date (UTC midnight) or a date and time, as ISO 8601. */
const ISO_DATE = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/

/**
 * A time given as a span relative to now or an ISO 8601 date, as ISO 8601 UTC text.
 * @example parseTimeInput('--expires', '30d', now, 'future')
 */
export function parseTimeInput(field: string, value: string, now: Date, direction: 'future' | 'past'): string {
  const relative = RELATIVE.exec(value)
  if (relative !== null) {
    const spanMs = Number(relative[1]) * UNIT_MS[relative[2] as keyof typeof UNIT_MS]
    return new Date(now.getTime() + (direction === 'future' ? spanMs : -spanMs)).toISOString()
  }
  // A bare date is UTC midnight (Date.parse already reads it so); a date-time without a zone is taken as UTC too.
  const withZone = /T[^Z+-]*$/.test(value) ? `${value}Z` : value
  const time = ISO_DATE.test(value) ? Date.parse(withZone) : Number.NaN
  if (Number.isNaN(time)) {
    throw new TeamError(
      'invalid',
      `${field} must be a span such as 30d, 12h or 2w, or a date such as 2027-01-01, found ${JSON.stringify(value)}`,
    )
  }
  return new Date(time).toISOString()
}
