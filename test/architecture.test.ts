import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, normalize, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

/**
 * The map in docs/ARCHITECTURE.md, held to: calls go one way down the layers, so no source file
 * imports (directly or not) one that imports it back, and the layers below the routes know
 * nothing of the HTTP framework.
 */

const SRC = join(dirname(fileURLToPath(import.meta.url)), '..', 'src')

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? sourceFiles(join(dir, entry.name)) : entry.name.endsWith('.ts') ? [join(dir, entry.name)] : [],
  )
}

// Type-only imports are erased at build time: they load nothing.
const IMPORT = /^(?:import|export)(?! type )[^'"]*from '([^']+)'/gm

function importsOf(file: string): { local: string[]; packages: string[] } {
  const local: string[] = []
  const packages: string[] = []
  for (const match of readFileSync(file, 'utf8').matchAll(IMPORT)) {
    const target = match[1] ?? ''
    if (target.startsWith('.')) local.push(normalize(join(dirname(file), target.replace(/\.js$/, '.ts'))))
    else packages.push(target)
  }
  return { local, packages }
}

const files = sourceFiles(SRC)
const graph = new Map(files.map((file) => [file, importsOf(file)]))
const name = (file: string) => relative(SRC, file)

t.test('no import cycle anywhere in src/', async (t) => {
  const cycles: string[] = []
  const state = new Map<string, 'visiting' | 'done'>()
  const visit = (file: string, path: string[]) => {
    state.set(file, 'visiting')
    for (const next of graph.get(file)?.local ?? []) {
      if (state.get(next) === 'visiting') cycles.push([...path, next].slice(path.indexOf(next)).map(name).join(' → '))
      else if (!state.has(next)) visit(next, [...path, next])
    }
    state.set(file, 'done')
  }
  for (const file of files) if (!state.has(file)) visit(file, [file])
  t.same(cycles, [], 'import cycles')
  t.ok(files.length > 20, `read ${files.length} source files`)
})

t.test('below the routes, nothing knows the HTTP framework', async (t) => {
  const frameworkFree = files.filter(
    (file) => /[/\\](upstream|chat|streaming|tracing)[/\\]/.test(file) || /failures|request-clock|lifecycle|errors/.test(name(file)),
  )
  t.ok(frameworkFree.length >= 12, `${frameworkFree.length} files checked`)
  for (const file of frameworkFree) {
    t.notOk(graph.get(file)?.packages.includes('fastify'), `${name(file)} does not import fastify`)
    const upward = (graph.get(file)?.local ?? []).filter((target) => /[/\\](routes|reply)[/\\]|app\.ts$|request-log\.ts$/.test(target))
    t.same(upward.map(name), [], `${name(file)} imports nothing from the routes, the reply or the app`)
  }
})

t.test('the team store stays out of the server path until team mode plugs it in', async (t) => {
  // Off by default: the local and sidecar modes load neither the store nor its native binding.
  const reachable = new Set<string>()
  const visit = (file: string) => {
    if (reachable.has(file)) return
    reachable.add(file)
    for (const next of graph.get(file)?.local ?? []) visit(next)
  }
  visit(join(SRC, 'main.ts'))
  const teamFiles = [...reachable].map(name).filter((file) => /^team[/\\]/.test(file))
  t.same(teamFiles.sort(), ['team/cli-help.ts', 'team/store/store-url.ts'], 'only leaves: the help text and storeUrl parsing')
  t.notOk(
    [...reachable].some((file) => graph.get(file)?.packages.some((pkg) => pkg === 'better-sqlite3' || pkg === 'kysely')),
    'no static import of the store libraries',
  )
})

t.test('OpenTelemetry stays out of the server path unless tracing is on', async (tt) => {
  // main.ts imports tracing/otel-tracer.ts dynamically, only with an OTLP endpoint set; the rest of
  // the proxy knows tracing through tracing/request-tracer.ts, whose no-op costs nothing.
  const importers = files.filter((file) => graph.get(file)?.packages.some((pkg) => pkg.startsWith('@opentelemetry/')))
  tt.same(importers.map(name), ['tracing/otel-tracer.ts'], 'only otel-tracer.ts imports @opentelemetry')
  const reachable = new Set<string>()
  const visit = (file: string) => {
    if (reachable.has(file)) return
    reachable.add(file)
    for (const next of graph.get(file)?.local ?? []) visit(next)
  }
  visit(join(SRC, 'main.ts'))
  tt.notOk(reachable.has(join(SRC, 'tracing', 'otel-tracer.ts')), 'main.ts does not reach otel-tracer.ts statically')
  tt.ok(reachable.has(join(SRC, 'tracing', 'request-tracer.ts')), 'the interface and its no-op are on the server path')
  tt.match(readFileSync(join(SRC, 'main.ts'), 'utf8'), /await import\('\.\/tracing\/otel-tracer\.js'\)/, 'main.ts loads it dynamically')
})
