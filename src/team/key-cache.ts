/**
 * Member-key lookups served from memory: a found key (or a miss, so a wrong key cannot make every
 * request a store query) is trusted for `ttlMs`; concurrent lookups of one key share one store
 * query; an update or revocation drops the key at once. Keyed by the secret's SHA-256, never the
 * secret.
 */

export interface CachedKey {
  readonly id: string
}

export interface KeyCache<K extends CachedKey> {
  /** The key with this secret hash, from memory when fresh, else from `load`. */
  lookup(secretHash: string, load: () => Promise<K | undefined>): Promise<K | undefined>
  /** The cached answer for this hash while it is fresh (`key` undefined: a cached miss), else undefined. */
  fresh(secretHash: string): { readonly key: K | undefined } | undefined
  /** Drops the key (updated or revoked) so the next request reads it again. */
  forget(keyId: string): void
  /** Drops every key: changes may have been missed. */
  forgetAll(): void
  readonly size: number
}

interface Entry<K> {
  readonly key: K | undefined
  readonly expiresAtMs: number
}

export function createKeyCache<K extends CachedKey>(options: { ttlMs: number; maxEntries?: number; now: () => number }): KeyCache<K> {
  const { ttlMs, now } = options
  const maxEntries = options.maxEntries ?? 10_000
  const entries = new Map<string, Entry<K>>()
  const loading = new Map<string, Promise<K | undefined>>()

  return {
    async lookup(secretHash, load) {
      const cached = entries.get(secretHash)
      if (cached !== undefined && cached.expiresAtMs > now()) return cached.key
      const pending = loading.get(secretHash)
      if (pending !== undefined) return pending
      const started = load()
        .then((key) => {
          entries.delete(secretHash)
          entries.set(secretHash, { key, expiresAtMs: now() + ttlMs })
          // Map order is insertion order: the first entry is the oldest.
          if (entries.size > maxEntries) entries.delete(entries.keys().next().value as string)
          return key
        })
        .finally(() => loading.delete(secretHash))
      loading.set(secretHash, started)
      return started
    },
    fresh(secretHash) {
      const cached = entries.get(secretHash)
      return cached !== undefined && cached.expiresAtMs > now() ? cached : undefined
    },
    forget(keyId) {
      for (const [hash, entry] of entries) if (entry.key?.id === keyId) entries.delete(hash)
    },
    forgetAll() {
      entries.clear()
    },
    get size() {
      return entries.size
    },
  }
}
