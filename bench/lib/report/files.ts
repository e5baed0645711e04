import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { RunMode } from '../cli.js'
import type { Report } from './report.js'

/** A smoke (CI) or a memory-only run never replaces the last full run's latest.*. */
export function resultsBaseName(mode: RunMode): 'latest' | 'smoke' | 'memory' {
  return mode === 'memory-only' ? 'memory' : mode === 'smoke' ? 'smoke' : 'latest'
}

/** Writes `<base>.{json,md}` after moving the last ones to `previous.*` (for latest) or `<base>-previous.*`. */
export function writeResults(resultsDir: string, base: string, report: Report, markdownText: string): void {
  mkdirSync(resultsDir, { recursive: true })
  for (const ext of ['json', 'md']) {
    const latest = join(resultsDir, `${base}.${ext}`)
    if (existsSync(latest)) renameSync(latest, join(resultsDir, `${base === 'latest' ? 'previous' : `${base}-previous`}.${ext}`))
  }
  writeFileSync(join(resultsDir, `${base}.json`), `${JSON.stringify(report, null, 2)}\n`)
  writeFileSync(join(resultsDir, `${base}.md`), markdownText)
}
