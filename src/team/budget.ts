import { periodStartMs } from './cost.js'
import type { KeyRecord } from './keys.js'

/**
 * What each key has spent in its current budget period. A key's spend is read from the usage store
 * once per period (its first request after the start, or after this process started), then kept up
 * to date in memory as requests end, so the request path never queries the store for it. The
 * fleet swaps in a ledger whose counters live in Redis, behind the same interface.
 */

export interface Spend {
  readonly tokens: number
  readonly usd: number
}

export interface BudgetLedger {
  /** The key's spend in the period `atMs` falls in. */
  spent(key: KeyRecord, atMs: number): Promise<Spend>
  /** Counts a finished request's tokens and cost (unknown counts add nothing). */
  add(key: KeyRecord, atMs: number, tokens: number | null, usd: number | null): void
}

/** Reads a key's recorded spend since a moment (the usage store's summary). */
export type SpendSince = (keyId: string, since: Date) => Promise<Spend>

export type BudgetVerdict =
  | { readonly ok: true }
  | { readonly ok: false; readonly unit: 'tokens' | 'usd'; readonly spent: number; readonly budget: number }

/** A budget admits a request while spent < budget; the request that crosses it is served and recorded. */
export function budgetVerdict(key: KeyRecord, spend: Spend): BudgetVerdict {
  if (key.budgetTokens !== null && spend.tokens >= key.budgetTokens)
    return { ok: false, unit: 'tokens', spent: spend.tokens, budget: key.budgetTokens }
  if (key.budgetUsd !== null && spend.usd >= key.budgetUsd) return { ok: false, unit: 'usd', spent: spend.usd, budget: key.budgetUsd }
  return { ok: true }
}

export function hasBudget(key: KeyRecord): boolean {
  return key.budgetTokens !== null || key.budgetUsd !== null
}

interface Tally {
  tokens: number
  usd: number
}

/** Periods kept per process; older ones are forgotten first. */
const MAX_TALLIES = 50_000

export function createMemoryBudgetLedger(spendSince: SpendSince): BudgetLedger {
  const tallies = new Map<string, Tally>()
  const loading = new Map<string, Promise<Tally>>()
  const tallyKey = (key: KeyRecord, atMs: number) => `${key.id}:${key.budgetPeriod}:${periodStartMs(key.budgetPeriod, atMs)}`

  return {
    async spent(key, atMs) {
      const id = tallyKey(key, atMs)
      const known = tallies.get(id)
      if (known !== undefined) return known
      let pending = loading.get(id)
      if (pending === undefined) {
        pending = spendSince(key.id, new Date(periodStartMs(key.budgetPeriod, atMs)))
          .then((stored) => {
            const tally = { tokens: stored.tokens, usd: stored.usd }
            tallies.set(id, tally)
            if (tallies.size > MAX_TALLIES) tallies.delete(tallies.keys().next().value as string)
            return tally
          })
          .finally(() => loading.delete(id))
        loading.set(id, pending)
      }
      return pending
    },
    add(key, atMs, tokens, usd) {
      if (!hasBudget(key)) return
      const tally = tallies.get(tallyKey(key, atMs))
      // A period never read has nothing to keep up to date: its first read takes the stored records
      // (a key's first request in a period waits for that read before it is admitted).
      if (tally === undefined) return
      tally.tokens += tokens ?? 0
      tally.usd += usd ?? 0
    },
  }
}
