import { readFileSync } from 'node:fs'

export interface LogSummary {
  readonly lines: number
  readonly warnOrWorse: number
  /** The first five warn-or-worse lines, each cut at 500 characters. */
  readonly sample: string[]
}

/** Counts the lines of a pino log and those at warn (40) or above. */
export function summariseLog(file: string): LogSummary {
  const lines = readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line !== '')
  let warnOrWorse = 0
  const sample: string[] = []
  for (const line of lines) {
    const level = /"level":(\d+)/.exec(line)?.[1]
    if (level !== undefined && Number(level) >= 40) {
      warnOrWorse += 1
      if (sample.length < 5) sample.push(line.slice(0, 500))
    }
  }
  return { lines: lines.length, warnOrWorse, sample }
}
