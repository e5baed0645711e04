import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'

/** The machine, the software versions and the commit the run measured (the report's `machine`). */
export function machineInfo(root: string): Record<string, string | number> {
  const cpus = os.cpus()
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryGb: Math.round(os.totalmem() / 1024 ** 3),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    loadAverage: os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(' '),
    node: process.version,
    fastify: versionOf(root, 'fastify'),
    undici: versionOf(root, 'undici'),
    httpProxy: versionOf(root, '@fastify/http-proxy'),
    autocannon: versionOf(root, 'autocannon'),
    commit: commitOf(root),
  }
}

function versionOf(root: string, pkg: string): string {
  try {
    return (JSON.parse(readFileSync(join(root, 'node_modules', pkg, 'package.json'), 'utf8')) as { version: string }).version
  } catch {
    return 'unknown'
  }
}

/** HEAD, and whether src/ has uncommitted changes (they are in the measured dist/ but not in HEAD). */
function commitOf(root: string): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim()
    const changed = execFileSync('git', ['status', '--porcelain', '--', 'src'], { cwd: root, encoding: 'utf8' })
      .split('\n')
      .filter((line) => line.trim() !== '').length
    return changed > 0 ? `${head} + uncommitted changes to ${changed} path(s) under src/` : head
  } catch {
    return 'unknown'
  }
}
