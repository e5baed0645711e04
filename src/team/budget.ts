import { periodStartMs } from './cost.js'
import type { BudgetPeriod } from './key-fields.js'
import type { KeyRecord } from './keys.js'

/**
 * A key's budget for the period a request falls in, and what the key has spent in it. The limiter
 * checks the budget as part of admission (the Redis limiter inside its one round trip) and adds a
 * finished request's spend when it settles. The memory ledger here reads a key's spend from the
 * usage store once per period (its first request after the start, or after this process started)
 * and keeps it up to date as requests end; the Redis limiter keeps the fleet's counter in Redis,
 * seeded from the same store read, and uses this ledger only while Redis is down.
 */

export interface Spend {
  readonly tokens: number
  readonly usd: number
}

/** One key's budget in one period: what admission checks and what a finished request adds to. */
export interface BudgetWindow {
  readonly keyId: string
  readonly period: BudgetPeriod
  /** Wall-clock ms (UTC) the period started: 0 for `total`. */
  readonly startMs: number
  /** Null for no token budget. */
  readonly tokens: number | null
  /** Null for no USD budget. */
  readonly usd: number | null
}

export interface BudgetLedger {
  /** The key's spend in the window's period. */
  spent(window: BudgetWindow): Promise<Spend>
  /** Counts a finished request's tokens and cost (unknown counts add nothing). */
  add(window: BudgetWindow, tokens: number | null, usd: number | null): void
}

/** Reads a key's recorded spend since a moment (the usage store's summary). */
export type SpendSince = (keyId: string, since: Date) => Promise<Spend>

export type BudgetVerdict =
  | { readonly ok: true }
  | { readonly ok: false; readonly unit: 'tokens' | 'usd'; readonly spent: number; readonly budget: number }

/** The key's budget window for a request received at `atMs`; undefined for a key without a budget. */
export function budgetWindow(key: KeyRecord, atMs: number): BudgetWindow | undefined {
  if (key.budgetTokens === null && key.budgetUsd === null) return undefined
  return {
    keyId: key.id,
    period: key.budgetPeriod,
    startMs: periodStartMs(key.budgetPeriod, atMs),
    tokens: key.budgetTokens,
    usd: key.budgetUsd,
  }
}

/** A budget admits a request while spent < budget; the request that crosses it is served and recorded. */
export function budgetVerdict(window: BudgetWindow, spend: Spend): BudgetVerdict {
  if (window.tokens !== null && spend.tokens >= window.tokens)
    return { ok: false, unit: 'tokens', spent: spend.tokens, budget: window.tokens }
  if (window.usd !== null && spend.usd >= window.usd) return { ok: false, unit: 'usd', spent: spend.usd, budget: window.usd }
  return { ok: true }
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
  const tallyKey = (window: BudgetWindow) => `${window.keyId}:${window.period}:${window.startMs}`

  return {
    async spent(window) {
      const id = tallyKey(window)
      const known = tallies.get(id)
      if (known !== undefined) return known
      let pending = loading.get(id)
      if (pending === undefined) {
        pending = spendSince(window.keyId, new Date(window.startMs))
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
    add(window, tokens, usd) {
      const tally = tallies.get(tallyKey(window))
      // A period never read has nothing to keep up to date: its first read takes the stored records
      // (a key's first request in a period waits for that read before it is admitted).
      if (tally === undefined) return
      tally.tokens += tokens ?? 0
      tally.usd += usd ?? 0
    },
  }
}

/** For limiters made without a store (tests): no spend recorded before this process. */
export const NOTHING_SPENT_BEFORE: SpendSince = async () => ({ tokens: 0, usd: 0 })
