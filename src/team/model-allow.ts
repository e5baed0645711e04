import { globToRegExp } from '../model-glob.js'

/** The allow-list match (model-glob.ts), compiled once per key record. */
const compiled = new WeakMap<readonly string[], readonly RegExp[]>()

/** True when the key may use the model; an empty list allows every model. */
export function modelAllowed(record: { readonly models: readonly string[] }, model: string): boolean {
  if (record.models.length === 0) return true
  let patterns = compiled.get(record.models)
  if (patterns === undefined) {
    patterns = record.models.map(globToRegExp)
    compiled.set(record.models, patterns)
  }
  return patterns.some((pattern) => pattern.test(model))
}

const filteredLists = new WeakMap<Buffer, Map<readonly string[], Buffer>>()

/**
 * A `/models` body with only the models the key may use. Computed once per list and allow-list
 * (a key record's `models` is frozen, so it is the cache key); a body that is not a model list is
 * returned as it is.
 */
export function modelListFor(record: { readonly models: readonly string[] }, body: Buffer): Buffer {
  if (record.models.length === 0) return body
  let byAllowList = filteredLists.get(body)
  if (byAllowList === undefined) {
    byAllowList = new Map()
    filteredLists.set(body, byAllowList)
  }
  let filtered = byAllowList.get(record.models)
  if (filtered === undefined) {
    filtered = filterList(record, body)
    byAllowList.set(record.models, filtered)
  }
  return filtered
}

function filterList(record: { readonly models: readonly string[] }, body: Buffer): Buffer {
  let list: unknown
  try {
    list = JSON.parse(body.toString('utf8'))
  } catch {
    return body
  }
  const data = (list as { data?: unknown } | null)?.data
  if (!Array.isArray(data)) return body
  const allowed = data.filter((entry) => {
    const id = (entry as { id?: unknown } | null)?.id
    return typeof id === 'string' && modelAllowed(record, id)
  })
  return Buffer.from(JSON.stringify({ ...(list as object), data: allowed }))
}
