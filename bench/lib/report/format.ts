/** A figure for a table: three significant digits or so, thousands separated; `–` when not a number. */
export function fmt(value: number | null | undefined, digits = 2): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return '–'
  if (Math.abs(value) >= 999.5) return Math.round(value).toLocaleString('en-US')
  if (Math.abs(value) >= 100) return value.toFixed(0)
  if (Math.abs(value) >= 10) return value.toFixed(1)
  return value.toFixed(digits)
}

/** `a ÷ b` as `1.23×`; `–` when either is missing or b is 0. */
export function ratio(a: number | null | undefined, b: number | null | undefined): string {
  if (a === null || a === undefined || b === null || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return '–'
  return `${(a / b).toFixed(2)}×`
}
