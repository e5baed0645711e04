import { createHash } from 'node:crypto'
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import ts from 'typescript'
import type { BenchPaths } from './paths.js'

/**
 * upstream.ts and floor.ts (and the soak's soak-probe.ts) are transpiled once to plain JS, so that they run on bare `node` like
 * dist/main.js does: no tsx loader thread or esbuild service skewing their CPU and RSS figures.
 * Returns the path of the .mjs file.
 */
export function transpileHelper(name: 'upstream' | 'floor' | 'soak-probe', paths: Pick<BenchPaths, 'bench' | 'build'>): string {
  mkdirSync(paths.build, { recursive: true })
  const source = readFileSync(join(paths.bench, `${name}.ts`), 'utf8')
  const output = ts.transpileModule(source, {
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, sourceMap: false },
    fileName: `${name}.ts`,
  })
  const file = join(paths.build, `${name}.mjs`)
  writeFileSync(file, output.outputText)
  return file
}

export interface DistSnapshot {
  /** The copy's main.js, what the proxy is run from. */
  readonly main: string
  /** The first 12 hex digits of a sha256 over the copy's .js files (paths and contents). */
  readonly fingerprint: string
}

/**
 * The proxy is run from a copy of dist/ taken when the run starts (right after `npm run build`),
 * so a rebuild while the bench runs cannot change what is measured halfway; the copy's
 * fingerprint goes into the report.
 */
export function snapshotDist(paths: Pick<BenchPaths, 'root' | 'build'>): DistSnapshot {
  const source = join(paths.root, 'dist')
  if (!existsSync(join(source, 'main.js'))) throw new Error('dist/main.js is missing: run `npm run build` first (npm run bench does)')
  const target = join(paths.build, 'dist')
  rmSync(target, { recursive: true, force: true })
  mkdirSync(paths.build, { recursive: true })
  cpSync(source, target, { recursive: true })
  // dist/main.js reads ../package.json (for --version), and "type": "module" must apply to the copy.
  copyFileSync(join(paths.root, 'package.json'), join(paths.build, 'package.json'))
  return { main: join(target, 'main.js'), fingerprint: fingerprintOf(target) }
}

function fingerprintOf(dir: string): string {
  const hash = createHash('sha256')
  const walk = (current: string): void => {
    for (const entry of readdirSync(current, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const path = join(current, entry.name)
      if (entry.isDirectory()) walk(path)
      else if (entry.name.endsWith('.js')) hash.update(path.slice(dir.length)).update(readFileSync(path))
    }
  }
  walk(dir)
  return hash.digest('hex').slice(0, 12)
}
