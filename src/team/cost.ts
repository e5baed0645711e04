import type { BudgetPeriod } from './key-fields.js'
import type { TokenUsage } from './usage-tokens.js'

/**
 * What a request cost, and which budget period it counts in. Prices come from `team.prices`, else
 * from the `/models` list's `pricing` when TopRouter sends it; with neither, the cost is unknown
 * (null) — never silently free.
 */

/** USD per million tokens. */
export interface ModelPrice {
  readonly inputPerMTok: number
  readonly outputPerMTok: number
}

/** The configured prices first, then what the model list said. */
export function priceOf(
  model: string,
  configured: Readonly<Record<string, ModelPrice>>,
  listed: ReadonlyMap<string, ModelPrice>,
): ModelPrice | undefined {
  return configured[model] ?? listed.get(model)
}

/** USD for a request's tokens; null when the price or the token counts are unknown. */
export function costUsd(usage: TokenUsage | undefined, price: ModelPrice | undefined): number | null {
  if (usage === undefined || price === undefined || usage.promptTokens === null || usage.completionTokens === null) return null
  return (usage.promptTokens * price.inputPerMTok + usage.completionTokens * price.outputPerMTok) / 1_000_000
}

/**
 * Prices from a `/models` body, OpenRouter-style `pricing: {prompt, completion}` in USD per token
 * (as strings or numbers); models without a usable price are left out.
 */
export function pricesFromModelList(body: Buffer): Map<string, ModelPrice> {
  const prices = new Map<string, ModelPrice>()
  let data: unknown
  try {
    data = (JSON.parse(body.toString('utf8')) as { data?: unknown } | null)?.data
  } catch {
    return prices
  }
  if (!Array.isArray(data)) return prices
  for (const entry of data) {
    const { id, pricing } = (entry ?? {}) as { id?: unknown; pricing?: { prompt?: unknown; completion?: unknown } }
    const input = perToken(pricing?.prompt)
    const output = perToken(pricing?.completion)
    if (typeof id === 'string' && input !== undefined && output !== undefined) {
      prices.set(id, { inputPerMTok: input * 1_000_000, outputPerMTok: output * 1_000_000 })
    }
  }
  return prices
}

function perToken(value: unknown): number | undefined {
  const number = typeof value === 'string' && value.trim() !== '' ? Number(value) : value
  return typeof number === 'number' && Number.isFinite(number) && number >= 0 ? number : undefined
}

/** The start (UTC, ms) of the period `atMs` falls in: day, ISO week (Monday), month, or 0 for total. */
export function periodStartMs(period: BudgetPeriod, atMs: number): number {
  const at = new Date(atMs)
  switch (period) {
    case 'day':
      return Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate())
    case 'week': {
      const daysSinceMonday = (at.getUTCDay() + 6) % 7
      return Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate() - daysSinceMonday)
    }
    case 'month':
      return Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), 1)
    case 'total':
      return 0
  }
}

/** When the period after the one `atMs` falls in starts (UTC). */
export function nextPeriodStartMs(period: 'day' | 'week' | 'month', atMs: number): number {
  const start = new Date(periodStartMs(period, atMs))
  if (period === 'day') return start.getTime() + 86_400_000
  if (period === 'week') return start.getTime() + 7 * 86_400_000
  return Date.UTC(start.getUTCFullYear(), start.getUTCMonth() + 1, 1)
}
