import { Counter, Gauge, Registry } from 'prom-client'

/**
 * The team gateway's metrics, on a registry of its own that the app serves with its others. The
 * key label is the key's name (never its id, prefix or secret), bounded: past `maxKeyLabels`
 * names, the rest are counted as `other`.
 */

export type KeyRequestListener = (keyName: string, status: number, tokens: { prompt: number | null; completion: number | null }) => void

export interface TeamMetrics {
  readonly registry: Registry
  request(keyName: string, status: number, tokens: { prompt: number | null; completion: number | null }): void
  /** Each request() is passed on to this listener too (the status page's per-key counts); one listener. */
  onRequest(listener: KeyRequestListener): void
  refusal(keyName: string, code: string): void
  /** The usage writer's state, read when /metrics is scraped. */
  watchUsageQueue(read: () => { queued: number; dropped: number; storeHealthy: boolean }): void
  watchLimiterQueue(read: () => number): void
  /** Only with `team.redisUrl`: whether the shared limits store is reachable. */
  watchRedis(read: () => boolean): void
}

export function createTeamMetrics(maxKeyLabels = 200): TeamMetrics {
  const registry = new Registry()
  const prefix = 'toprouter_proxy_'
  const labelled = new Set<string>()
  const keyLabel = (name: string) => {
    if (labelled.has(name)) return name
    if (labelled.size < maxKeyLabels) {
      labelled.add(name)
      return name
    }
    return 'other'
  }

  const requests = new Counter({
    name: `${prefix}key_requests_total`,
    help: 'Chat requests per gateway key (by key name) and status, refusals included',
    labelNames: ['key', 'status'],
    registers: [registry],
  })
  const tokens = new Counter({
    name: `${prefix}key_tokens_total`,
    help: 'Tokens per gateway key, as the upstream counted them',
    labelNames: ['key', 'kind'],
    registers: [registry],
  })
  const refusals = new Counter({
    name: `${prefix}key_refusals_total`,
    help: 'Requests refused by the team gateway before the upstream, by key and code',
    labelNames: ['key', 'code'],
    registers: [registry],
  })
  const children = new Map<string, Counter.Internal>()
  const child = (counter: Counter, key: string, second: string) => {
    const id = `${counter === requests ? 'r' : 't'}\n${key}\n${second}`
    let found = children.get(id)
    if (found === undefined) {
      found = counter.labels(key, second)
      children.set(id, found)
    }
    return found
  }

  let listener: KeyRequestListener | undefined

  return {
    registry,
    onRequest(next) {
      listener = next
    },
    request(keyName, status, used) {
      listener?.(keyName, status, used)
      const key = keyLabel(keyName)
      child(requests, key, String(status)).inc()
      if (used.prompt !== null && used.prompt > 0) child(tokens, key, 'prompt').inc(used.prompt)
      if (used.completion !== null && used.completion > 0) child(tokens, key, 'completion').inc(used.completion)
    },
    refusal: (keyName, code) => refusals.inc({ key: keyLabel(keyName), code }),
    watchUsageQueue(read) {
      new Gauge({
        name: `${prefix}usage_queue_records`,
        help: 'Usage records waiting to be written to the store (grows while the store is unavailable)',
        registers: [registry],
        collect() {
          this.set(read().queued)
        },
      })
      new Gauge({
        name: `${prefix}usage_records_dropped`,
        help: 'Usage records dropped because the waiting queue was full (the store was unavailable too long)',
        registers: [registry],
        collect() {
          this.set(read().dropped)
        },
      })
      new Gauge({
        name: `${prefix}usage_store_up`,
        help: '1 while the usage store accepts writes, 0 while records wait in memory',
        registers: [registry],
        collect() {
          this.set(read().storeHealthy ? 1 : 0)
        },
      })
    },
    watchLimiterQueue(read) {
      new Gauge({
        name: `${prefix}key_queue_waiting`,
        help: "Requests waiting in a gateway key's queue (team.maxQueueWaitMs)",
        registers: [registry],
        collect() {
          this.set(read())
        },
      })
    },
    watchRedis(read) {
      new Gauge({
        name: `${prefix}redis_up`,
        help: '1 while the Redis limits store is reachable (limits shared by the replicas), 0 while it is not',
        registers: [registry],
        collect() {
          this.set(read() ? 1 : 0)
        },
      })
    },
  }
}
