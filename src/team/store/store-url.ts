/** Where the team store lives: the embedded SQLite file, or (the fleet issue) a PostgreSQL server. */
export type StoreLocation = { readonly kind: 'sqlite'; readonly path: string } | { readonly kind: 'postgres'; readonly url: string }

/** `sqlite:<path>` or `postgres://…` / `postgresql://…`; anything else is undefined. */
export function parseStoreUrl(storeUrl: string): StoreLocation | undefined {
  if (storeUrl.startsWith('sqlite:')) {
    const path = storeUrl.slice('sqlite:'.length)
    return path.trim() === '' ? undefined : { kind: 'sqlite', path }
  }
  if (/^postgres(ql)?:\/\//.test(storeUrl)) {
    try {
      const url = new URL(storeUrl)
      return url.hostname === '' ? undefined : { kind: 'postgres', url: storeUrl }
    } catch {
      return undefined
    }
  }
  return undefined
}

/** A store or Redis URL as it may be logged or shown: a password in it is replaced by `***`. */
export function shownUrl(value: string): string {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(value)?.[1]
  if (scheme === undefined) return value
  try {
    const url = new URL(value)
    if (url.password !== '') url.password = '***'
    return url.toString()
  } catch {
    return `${scheme}://(unparseable)`
  }
}
