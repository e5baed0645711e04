import { TeamError } from './errors.js'
import type { KeyService } from './keys.js'
import type { UsageRow } from './store/schema.js'
import type { UsageGrouping, UsageStore, UsageSummaryRow } from './store/store.js'

/** Usage: one record per authenticated request (refusals included), written in batches, summarised for the CLI and the admin API. */

export type UsageEnding = 'complete' | 'cut' | 'stalled' | 'client_closed' | 'error'
export const USAGE_GROUPINGS: readonly UsageGrouping[] = ['key', 'model', 'day']

export interface UsageRecord {
  readonly time: Date
  readonly keyId: string
  readonly requestId: string
  readonly modelRequested: string
  /** null when nothing served (a refusal, every model failed). */
  readonly modelServed: string | null
  readonly status: number
  readonly stream: boolean
  readonly ending: UsageEnding
  readonly attempts: number
  /** null when unknown (a cut stream), never guessed. */
  readonly promptTokens: number | null
  readonly completionTokens: number | null
  readonly totalTokens: number | null
  /** null when no price is known for the model. */
  readonly costUsd: number | null
  readonly latencyMs: number
  readonly ttftMs: number | null
}

export interface UsageSummaryQuery {
  /** A key's id or name. */
  readonly key?: string | undefined
  /** Inclusive. */
  readonly since?: Date | undefined
  /** Exclusive. */
  readonly until?: Date | undefined
  readonly by: UsageGrouping
}

export interface UsageService {
  recordUsage(batch: readonly UsageRecord[]): Promise<void>
  summarizeUsage(query: UsageSummaryQuery): Promise<UsageSummaryRow[]>
}

export function createUsageService(deps: { readonly usage: UsageStore; readonly keys: KeyService }): UsageService {
  return {
    recordUsage: (batch) => deps.usage.insertUsage(batch.map(toUsageRow)),
    async summarizeUsage(query) {
      if (!USAGE_GROUPINGS.includes(query.by)) {
        throw new TeamError('invalid', `by must be one of ${USAGE_GROUPINGS.join(', ')}, found ${JSON.stringify(query.by)}`)
      }
      const keyId = query.key === undefined ? undefined : (await deps.keys.getKey(query.key)).id
      return deps.usage.summarizeUsage({ keyId, since: query.since?.toISOString(), until: query.until?.toISOString(), by: query.by })
    },
  }
}

function toUsageRow(record: UsageRecord): UsageRow {
  return {
    time: record.time.toISOString(),
    key_id: record.keyId,
    request_id: record.requestId,
    model_requested: record.modelRequested,
    model_served: record.modelServed,
    status: record.status,
    stream: record.stream ? 1 : 0,
    ending: record.ending,
    attempts: record.attempts,
    prompt_tokens: record.promptTokens,
    completion_tokens: record.completionTokens,
    total_tokens: record.totalTokens,
    cost_usd: record.costUsd,
    latency_ms: record.latencyMs,
    ttft_ms: record.ttftMs,
  }
}
