import type { HeaderMap } from './http-headers.js'

/**
 * The `/models` cache: fresh for `ttlMs`; concurrent misses share one upstream call (single
 * flight); when a refresh fails, a copy up to `staleIfErrorMs` past its freshness is served
 * instead (RFC 5861's stale-if-error). Keyed by the caller's credentials and query, so one key's
 * list is never served to another.
 */

/** A model list as fetched: status, passed-on headers and the body, byte for byte. */
export interface CachedResponse {
  readonly statusCode: number
  readonly headers: HeaderMap
  readonly body: Buffer
}

export type CacheResult = 'HIT' | 'MISS' | 'STALE'

export interface CachedModels {
  readonly response: CachedResponse
  readonly result: CacheResult
  readonly ageSeconds: number
  /** The model with this id, serialised, or undefined; the list is indexed once per fetch. */
  model(id: string): string | undefined
}

export interface ModelsCache {
  get(key: string, load: () => Promise<CachedResponse>, onStale: (error: unknown) => void): Promise<CachedModels>
}

interface Entry {
  readonly response: CachedResponse
  readonly fetchedAtMs: number
  index: Map<string, string> | undefined
}

export function createModelsCache(options: { ttlMs: number; staleIfErrorMs: number; maxEntries?: number; now: () => number }): ModelsCache {
  const { now } = options
  const maxEntries = options.maxEntries ?? 256
  const entries = new Map<string, Entry>()
  const inFlight = new Map<string, Promise<Entry>>()

  function view(entry: Entry, result: CacheResult): CachedModels {
    return {
      response: entry.response,
      result,
      ageSeconds: Math.max(0, Math.floor((now() - entry.fetchedAtMs) / 1000)),
      model(id) {
        entry.index ??= indexModels(entry.response.body)
        return entry.index.get(id)
      },
    }
  }

  function refresh(key: string, load: () => Promise<CachedResponse>): Promise<Entry> {
    const pending = inFlight.get(key)
    if (pending !== undefined) return pending
    const started = load()
      .then((response) => {
        const entry: Entry = { response, fetchedAtMs: now(), index: undefined }
        entries.delete(key)
        entries.set(key, entry)
        if (entries.size > maxEntries) entries.delete(entries.keys().next().value as string)
        return entry
      })
      .finally(() => inFlight.delete(key))
    inFlight.set(key, started)
    return started
  }

  return {
    async get(key, load, onStale) {
      const cached = entries.get(key)
      const age = cached === undefined ? Infinity : now() - cached.fetchedAtMs
      if (cached !== undefined && age < options.ttlMs) return view(cached, 'HIT')
      try {
        return view(await refresh(key, load), 'MISS')
      } catch (error: unknown) {
        if (cached !== undefined && age < options.ttlMs + options.staleIfErrorMs) {
          onStale(error)
          return view(cached, 'STALE')
        }
        throw error
      }
    },
  }
}

function indexModels(body: Buffer): Map<string, string> {
  const index = new Map<string, string>()
  let list: unknown
  try {
    list = JSON.parse(body.toString('utf8'))
  } catch {
    return index
  }
  const data = (list as { data?: unknown } | null)?.data
  if (!Array.isArray(data)) return index
  for (const entry of data) {
    const id = (entry as { id?: unknown } | null)?.id
    if (typeof id === 'string') index.set(id, JSON.stringify(entry))
  }
  return index
}
