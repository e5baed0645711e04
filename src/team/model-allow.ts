/**
 * The allow-list match: exact ids, or globs where `*` is any run of characters (slashes included,
 * so `google/*` and `*-flash` both work) and `?` one character. Written here rather than taken from
 * picomatch: model ids are not paths, and five lines need no dependency.
 */
const compiled = new WeakMap<readonly string[], readonly RegExp[]>()

function globToRegExp(glob: string): RegExp {
  const pattern = glob
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replaceAll('*', '.*')
    .replaceAll('?', '.')
  return new RegExp(`^${pattern}$`)
}

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
