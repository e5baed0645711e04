/**
 * Model id patterns: exact ids, or globs where `*` is any run of characters (slashes included, so
 * `google/*` and `*-flash` both work) and `?` one character. Written here rather than taken from
 * picomatch: model ids are not paths, and five lines need no dependency. Used by team keys'
 * allow-lists and by `streams.continuation.prefillModels`.
 */

export function globToRegExp(glob: string): RegExp {
  const pattern = glob
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replaceAll('*', '.*')
    .replaceAll('?', '.')
  return new RegExp(`^${pattern}$`)
}

/** A test for "matches one of these patterns". */
export function modelMatcher(globs: readonly string[]): (model: string) => boolean {
  const patterns = globs.map(globToRegExp)
  return (model) => patterns.some((pattern) => pattern.test(model))
}
