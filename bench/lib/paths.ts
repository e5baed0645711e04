import { join } from 'node:path'

/** Where the bench reads its inputs and writes its results, all derived from the repository root. */
export interface BenchPaths {
  readonly root: string
  readonly bench: string
  readonly results: string
  /** Transpiled helpers and the dist/ snapshot the proxy runs from. */
  readonly build: string
}

export function benchPaths(root: string): BenchPaths {
  const bench = join(root, 'bench')
  const results = join(bench, 'results')
  return { root, bench, results, build: join(results, '.build') }
}
