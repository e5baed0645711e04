import { type ChildProcess, spawn } from 'node:child_process'
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { type AddressInfo, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { basename, dirname, join, posix } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { completion, sendJson, startFakeUpstream } from './helpers/fake-upstream.js'

/**
 * There is no Docker engine in CI, so this test proves the image instead: it parses the Dockerfile,
 * checks the runtime stage's shape (slim base, non-root, exec-form node CMD, HEALTHCHECK on /healthz,
 * no build tools), then replays that stage into a fresh directory standing in for the image's
 * filesystem — its COPY lines (the build context is this repository, the build stage's dist/ is the
 * `npm pack` output, and any other stage it copies from, such as the one installing the production
 * dependencies, is replayed itself from scratch), its RUN lines, its ENV, its CMD and its HEALTHCHECK,
 * all taken from the Dockerfile — and checks that the result serves, reports healthy, reads a mounted
 * config, opens the team store (better-sqlite3's native binding) and exits 0 on SIGTERM. Run as root
 * (as CI is), the replayed image's processes run as its USER's uid, like the container would.
 */

// npm ci against the registry (with an empty, private npm cache) takes a while, and where
// better-sqlite3 has no prebuilt binding to download (none can be downloaded here), node-gyp
// compiles SQLite: about two minutes on two cores.
t.setTimeout(600_000)

const repoRoot = fileURLToPath(new URL('..', import.meta.url))

// ---------------------------------------------------------------------------------------------
// A small Dockerfile parser: enough of the reference syntax for this repository's Dockerfile.
// ---------------------------------------------------------------------------------------------

interface Instruction {
  readonly keyword: string
  readonly args: string
  readonly line: number
}

interface Stage {
  /** The image after ARG substitution, e.g. node:24-slim. */
  readonly image: string
  readonly name: string | undefined
  readonly instructions: Instruction[]
}

interface Command {
  readonly execForm: boolean
  readonly argv: string[]
}

interface RunStep {
  readonly command: Command
  /** The ENV in effect when this RUN executes. */
  readonly env: Record<string, string>
  /** The WORKDIR in effect when this RUN executes. */
  readonly workdir: string
}

interface CopyStep {
  /** --from=…: a stage's name or index, or an image; undefined for the build context. */
  readonly from: string | undefined
  /** --chown=…, e.g. node:node. */
  readonly chown: string | undefined
  readonly sources: string[]
  /** As written: relative to `workdir` unless absolute; a trailing / names a directory. */
  readonly dest: string
  readonly workdir: string
}

type Step = { readonly kind: 'run'; readonly run: RunStep } | { readonly kind: 'copy'; readonly copy: CopyStep }

interface StageDescription {
  readonly image: string
  readonly name: string | undefined
  readonly env: Record<string, string>
  readonly workdir: string | undefined
  readonly user: string | undefined
  readonly expose: string[]
  readonly healthcheck: { readonly options: Record<string, string>; readonly command: Command } | 'NONE' | undefined
  readonly cmd: Command | undefined
  readonly runs: RunStep[]
  readonly copies: CopyStep[]
  /** RUN and COPY in Dockerfile order, for the replay. */
  readonly steps: Step[]
}

/** Joins continuation lines and drops comments and blank lines. */
function logicalLines(text: string): Array<{ text: string; line: number }> {
  const out: Array<{ text: string; line: number }> = []
  let buffer: string | undefined
  let start = 0
  text.split(/\r?\n/).forEach((raw, index) => {
    if (/^\s*#/.test(raw)) return // comments, also inside a continued instruction
    if (raw.trim() === '') return
    const trimmed = raw.replace(/\s+$/, '')
    if (buffer === undefined) {
      buffer = ''
      start = index + 1
    }
    if (trimmed.endsWith('\\')) {
      buffer += trimmed.slice(0, -1)
      return
    }
    out.push({ text: (buffer + trimmed).trim(), line: start })
    buffer = undefined
  })
  if (buffer !== undefined) out.push({ text: buffer.trim(), line: start })
  return out
}

/** Shell-like word splitting with quotes and backslash escapes (for ENV, FROM, EXPOSE, …). */
function splitWords(text: string): string[] {
  const words: string[] = []
  let current = ''
  let inWord = false
  let quote: '"' | "'" | undefined
  for (let i = 0; i < text.length; i++) {
    const c = text[i] ?? ''
    if (quote !== undefined) {
      if (c === quote) quote = undefined
      else if (c === '\\' && quote === '"' && i + 1 < text.length) current += text[++i] ?? ''
      else current += c
      continue
    }
    if (c === '"' || c === "'") {
      quote = c
      inWord = true
    } else if (c === '\\' && i + 1 < text.length) {
      current += text[++i] ?? ''
      inWord = true
    } else if (/\s/.test(c)) {
      if (inWord) words.push(current)
      current = ''
      inWord = false
    } else {
      current += c
      inWord = true
    }
  }
  if (quote !== undefined) throw new Error(`unterminated ${quote} in: ${text}`)
  if (inWord) words.push(current)
  return words
}

/** `$NAME`, `${NAME}` and `${NAME:-default}` from the given variables. */
function substitute(text: string, vars: Readonly<Record<string, string>>): string {
  return text.replace(
    /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (whole, braced?: string, fallback?: string, bare?: string) => {
      const name = braced ?? bare ?? ''
      const value = vars[name]
      if (value !== undefined && value !== '') return value
      return fallback ?? whole
    },
  )
}

/** JSON array → exec form; anything else → shell form, run by /bin/sh -c like Docker does. */
function parseCommand(args: string): Command {
  const trimmed = args.trim()
  if (trimmed.startsWith('[')) {
    try {
      const parsed: unknown = JSON.parse(trimmed)
      if (Array.isArray(parsed) && parsed.every((part) => typeof part === 'string')) {
        return { execForm: true, argv: parsed as string[] }
      }
    } catch {
      // Not valid JSON: Docker falls back to the shell form.
    }
  }
  return { execForm: false, argv: ['/bin/sh', '-c', trimmed] }
}

function parseDockerfile(text: string): { globalArgs: Record<string, string>; stages: Stage[] } {
  const globalArgs: Record<string, string> = {}
  const stages: Stage[] = []
  for (const { text: lineText, line } of logicalLines(text)) {
    const match = /^(\S+)\s*(.*)$/s.exec(lineText)
    if (match === null) continue
    const keyword = (match[1] ?? '').toUpperCase()
    const args = match[2] ?? ''
    if (keyword === 'FROM') {
      const words = splitWords(args).filter((word) => !word.startsWith('--'))
      const image = substitute(words[0] ?? '', globalArgs)
      const asIndex = words.findIndex((word) => word.toUpperCase() === 'AS')
      stages.push({ image, name: asIndex >= 0 ? words[asIndex + 1] : undefined, instructions: [] })
      continue
    }
    const current = stages.at(-1)
    if (current === undefined) {
      if (keyword === 'ARG') {
        for (const word of splitWords(args)) {
          const eq = word.indexOf('=')
          if (eq > 0) globalArgs[word.slice(0, eq)] = word.slice(eq + 1)
        }
      }
      continue
    }
    current.instructions.push({ keyword, args, line })
  }
  return { globalArgs, stages }
}

function parseEnv(args: string, env: Record<string, string>): void {
  const words = splitWords(args)
  const first = words[0] ?? ''
  if (!first.includes('=')) {
    // Legacy form: ENV NAME value with spaces
    const value = args.trim().slice(first.length).trim()
    env[first] = substitute(value, env)
    return
  }
  for (const word of words) {
    const eq = word.indexOf('=')
    if (eq <= 0) throw new Error(`ENV entry without a name: ${word}`)
    env[word.slice(0, eq)] = substitute(word.slice(eq + 1), env)
  }
}

/** COPY/ADD arguments: flags, sources, destination (shell-like words or a JSON array). */
function parseCopy(args: string, env: Record<string, string>, workdir: string): CopyStep {
  const trimmed = args.trim()
  let words: string[]
  if (trimmed.startsWith('[')) {
    words = JSON.parse(trimmed) as string[]
  } else {
    words = splitWords(substitute(trimmed, env))
  }
  const flags: Record<string, string> = {}
  while (words[0]?.startsWith('--')) {
    const flag = (words.shift() ?? '').slice(2)
    const eq = flag.indexOf('=')
    flags[eq < 0 ? flag : flag.slice(0, eq)] = eq < 0 ? '' : flag.slice(eq + 1)
  }
  const dest = words.pop()
  if (dest === undefined || words.length === 0) throw new Error(`COPY needs a source and a destination: ${args}`)
  return { from: flags.from, chown: flags.chown, sources: words, dest, workdir }
}

function describeStage(stage: Stage): StageDescription {
  const env: Record<string, string> = {}
  let workdir: string | undefined
  let user: string | undefined
  const expose: string[] = []
  let healthcheck: StageDescription['healthcheck']
  let cmd: Command | undefined
  const runs: RunStep[] = []
  const copies: CopyStep[] = []
  const steps: Step[] = []
  for (const { keyword, args } of stage.instructions) {
    switch (keyword) {
      case 'ENV':
        parseEnv(args, env)
        break
      case 'WORKDIR':
        workdir = posix.resolve(workdir ?? '/', substitute(args.trim(), env))
        break
      case 'USER':
        user = substitute(args.trim(), env)
        break
      case 'EXPOSE':
        expose.push(...splitWords(substitute(args, env)))
        break
      case 'CMD':
        cmd = parseCommand(args)
        break
      case 'COPY':
      case 'ADD': {
        const copy = parseCopy(args, env, workdir ?? '/')
        copies.push(copy)
        steps.push({ kind: 'copy', copy })
        break
      }
      case 'RUN': {
        // Strip RUN flags such as --mount=… / --network=…
        const command = args.replace(/^(\s*--\S+)+\s*/, '')
        const run = { command: parseCommand(command), env: { ...env }, workdir: workdir ?? '/' }
        runs.push(run)
        steps.push({ kind: 'run', run })
        break
      }
      case 'HEALTHCHECK': {
        let rest = args.trim()
        const options: Record<string, string> = {}
        for (let option = /^--([a-z-]+)=(\S+)\s*/.exec(rest); option !== null; option = /^--([a-z-]+)=(\S+)\s*/.exec(rest)) {
          options[option[1] ?? ''] = option[2] ?? ''
          rest = rest.slice(option[0].length)
        }
        if (/^NONE$/i.test(rest)) healthcheck = 'NONE'
        else {
          const cmdMatch = /^CMD\s+(.*)$/is.exec(rest)
          if (cmdMatch === null) throw new Error(`HEALTHCHECK without CMD: ${args}`)
          healthcheck = { options, command: parseCommand(cmdMatch[1] ?? '') }
        }
        break
      }
      default:
        break
    }
  }
  return { image: stage.image, name: stage.name, env, workdir, user, expose, healthcheck, cmd, runs, copies, steps }
}

/** Docker durations: 10s, 1m30s, 500ms. */
function durationMs(value: string): number {
  let total = 0
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/g
  let matched = ''
  for (let m = re.exec(value); m !== null; m = re.exec(value)) {
    matched += m[0]
    const n = Number(m[1])
    total += m[2] === 'ms' ? n : m[2] === 's' ? n * 1000 : m[2] === 'm' ? n * 60_000 : n * 3_600_000
  }
  if (matched !== value) throw new Error(`not a Docker duration: ${value}`)
  return total
}

// ---------------------------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------------------------

interface RunResult {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
  readonly timedOut: boolean
}

/** The host environment minus what npm, tap and tsx put there for *this* process. */
function cleanHostEnv(): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (value === undefined) continue
    if (/^npm_/.test(name) || /^(TAP|_TAP)/i.test(name) || name === 'NODE_OPTIONS' || name === 'NODE_ENV') continue
    env[name] = value
  }
  return env
}

/** `node` in the image is the image's node; here it is the node running the tests. */
function resolveArgv(argv: readonly string[]): [string, string[]] {
  const [file = '', ...rest] = argv
  return [file === 'node' ? process.execPath : file, rest]
}

/**
 * A process of the replayed image. tap's spawn wrapper adds its process-info hook to every child's
 * NODE_OPTIONS; `env -u` takes it out again (and env execs, so the PID and signals are the
 * command's), so the process sees only the image's environment and, run as the image's uid, does not
 * try to write into tap's root-owned .tap/ as it exits.
 */
function imageArgv(argv: readonly string[]): string[] {
  const [file, args] = resolveArgv(argv)
  return ['env', '-u', 'NODE_OPTIONS', file, ...args]
}

interface Ids {
  readonly uid: number
  readonly gid: number
}

function run(
  argv: readonly string[],
  options: { cwd: string; env: Record<string, string>; timeoutMs: number; as?: Ids | undefined },
): Promise<RunResult> {
  const [file, args] = resolveArgv(argv)
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'pipe'], ...options.as })
    let stdout = ''
    let stderr = ''
    let timedOut = false
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, options.timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, timedOut })
    })
  })
}

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null } | 'timeout'> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode })
  }
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve('timeout'), timeoutMs)
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal })
    })
  })
}

async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

function newestMtime(dir: string): number {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs)
  }
  return newest
}

// ---------------------------------------------------------------------------------------------
// Replay helpers: a directory stands in for an image's filesystem
// ---------------------------------------------------------------------------------------------

/** Where the container path `path` (absolute, or relative to `workdir`) lives under `root`. */
function hostPath(root: string, workdir: string, path: string): string {
  return join(root, posix.resolve(workdir, path))
}

/**
 * The uid/gid a USER or --chown value stands for in the image, when this process can take them
 * (it is root, as CI is); undefined otherwise, and the replay then runs as the current user.
 */
function imageIds(user: string | undefined): Ids | undefined {
  if (user === undefined || process.getuid?.() !== 0) return undefined
  const [name = '', group = name] = user.split(':')
  // The official node images' "node" user and group are 1000.
  const id = (value: string) => (value === 'node' ? 1000 : /^\d+$/.test(value) ? Number(value) : Number.NaN)
  const ids = { uid: id(name), gid: id(group) }
  if (Number.isNaN(ids.uid) || Number.isNaN(ids.gid))
    throw new Error(`the replay knows the ids of "node" and numeric users only, found ${user}`)
  return ids
}

function chownTree(path: string, ids: Ids): void {
  lchownSync(path, ids.uid, ids.gid)
  if (lstatSync(path).isDirectory()) {
    for (const entry of readdirSync(path)) chownTree(join(path, entry), ids)
  }
}

/** COPY semantics: a directory's contents go into dest, a file into dest/ or onto dest. */
function copyInto(source: string, dest: string, destIsDirectory: boolean, ids: Ids | undefined): void {
  let target = dest
  if (statSync(source).isDirectory()) {
    cpSync(source, dest, { recursive: true, verbatimSymlinks: true })
  } else {
    target = destIsDirectory ? join(dest, basename(source)) : dest
    mkdirSync(dirname(target), { recursive: true })
    copyFileSync(source, target)
  }
  if (ids !== undefined) chownTree(target, ids)
}

/** .dockerignore's patterns, enough for this repository's file (names, dir/…, and * globs). */
function dockerignored(path: string, patterns: readonly string[]): boolean {
  const clean = posix.normalize(path).replace(/^(\.\/)+|\/+$/g, '')
  return patterns.some((pattern) => {
    const body = pattern.replace(/[.+?^$()|[\]{}\\]/g, '\\$&').replaceAll('*', '[^/]*')
    return new RegExp(`^${body}(/|$)`).test(clean)
  })
}

/** The packages of an `apt-get install` (or undefined for any other command). */
function aptInstalls(command: Command): string[] | undefined {
  const text = command.argv.join(' ')
  const match = /\bapt(?:-get)?\s+install\s+([^&;|]*)/.exec(text)
  return match === null ? undefined : splitWords(match[1] ?? '').filter((word) => !word.startsWith('-'))
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile's structure
// ---------------------------------------------------------------------------------------------

const dockerfile = parseDockerfile(readFileSync(join(repoRoot, 'Dockerfile'), 'utf8'))
const stages = dockerfile.stages.map(describeStage)
const runtime = stages.at(-1)
const earlierStages = stages.slice(0, -1)

/** The earlier stage a COPY --from names (by name, case-insensitively, or by index); undefined for an image. */
function stageNamed(ref: string | undefined): StageDescription | undefined {
  if (ref === undefined) return undefined
  if (/^\d+$/.test(ref)) return earlierStages[Number(ref)]
  return earlierStages.find((stage) => stage.name?.toLowerCase() === ref.toLowerCase())
}

const compiles = (stage: StageDescription) => stage.runs.some((step) => /\bnpm run build\b/.test(step.command.argv.join(' ')))
const installsProdDeps = (stage: StageDescription) =>
  stage.runs.some((step) => /\bnpm ci\b[^\n;&|]*--omit=dev/.test(step.command.argv.join(' ')))
const isNodeModules = (path: string) => /(^|\/)node_modules\/?$/.test(path)

/** The stage whose `npm ci --omit=dev` fills the runtime's node_modules: the runtime itself, or the one it copies them from. */
const prodDepsStage: StageDescription | undefined = (() => {
  const copy = runtime?.copies.find((c) => c.from !== undefined && c.sources.some(isNodeModules))
  return copy === undefined ? runtime : stageNamed(copy.from)
})()

t.test('the Dockerfile is a multi-stage build that compiles in an earlier stage', async (t) => {
  t.ok(dockerfile.stages.length >= 2, `at least two FROM stages (found ${dockerfile.stages.length})`)
  t.ok(earlierStages.some(compiles), 'an earlier stage runs npm run build')
  const distFromBuild = (runtime?.copies ?? []).find(
    (copy) => stageNamed(copy.from) !== undefined && copy.sources.some((src) => /\bdist\b/.test(src)),
  )
  t.ok(distFromBuild, 'the runtime stage copies dist/ from a build stage')
})

t.test('the runtime stage uses a slim node image', async (t) => {
  t.ok(runtime, 'there is a final stage')
  t.match(runtime?.image, /^node:[^\s$]*-slim$/, `final FROM resolves to a node -slim image (found ${runtime?.image})`)
  t.equal(runtime?.workdir, '/app', 'WORKDIR /app')
})

t.test('the runtime stage runs as a non-root user', async (t) => {
  const user = runtime?.user
  t.type(user, 'string', 'a USER instruction is present')
  const name = (user ?? '').split(':')[0] ?? ''
  t.not(name, '', 'USER names a user')
  t.not(name, 'root', 'USER is not root')
  t.not(name, '0', 'USER is not uid 0')
})

t.test('HEALTHCHECK probes /healthz with node (slim images have no curl)', async (t) => {
  const healthcheck = runtime?.healthcheck
  if (healthcheck === undefined || healthcheck === 'NONE') {
    t.fail(`a HEALTHCHECK with a command is present (found ${String(healthcheck)})`)
    return
  }
  t.ok(healthcheck.command.execForm, 'HEALTHCHECK CMD is exec form')
  t.equal(healthcheck.command.argv[0], 'node', 'HEALTHCHECK runs node')
  t.match(healthcheck.command.argv.join(' '), /\/healthz\b/, 'HEALTHCHECK hits /healthz')
  t.notMatch(healthcheck.command.argv.join(' '), /\/readyz\b/, 'liveness, not readiness: a draining proxy must not be restarted')
  const timeout = healthcheck.options.timeout
  t.type(timeout, 'string', 'HEALTHCHECK sets --timeout')
  t.ok(durationMs(timeout ?? '0s') > 0, 'the timeout is a positive duration')
})

t.test('CMD is an exec-form node command, so node is PID 1 and receives SIGTERM', async (t) => {
  const cmd = runtime?.cmd
  t.ok(cmd?.execForm, 'CMD is a JSON array (exec form)')
  t.equal(cmd?.argv[0], 'node', 'CMD starts with node')
  t.notMatch(cmd?.argv.join(' ') ?? '', /\bnpm\b|\bsh\b|\bbash\b/, 'no npm and no shell in between')
  t.match(cmd?.argv[1], /\.js$/, 'CMD runs a compiled .js entry point')
})

t.test('the runtime ENV listens on all interfaces on port 8787', async (t) => {
  t.equal(runtime?.env.HOST, '0.0.0.0')
  t.equal(runtime?.env.PORT, '8787')
  t.equal(runtime?.env.NODE_ENV, 'production')
  t.ok(
    runtime?.expose.some((port) => port.replace(/\/tcp$/, '') === runtime.env.PORT),
    'EXPOSE matches PORT',
  )
  t.notOk(
    Object.keys(runtime?.env ?? {}).some((name) => /KEY|TOKEN|SECRET/i.test(name)),
    'no secret is baked into the image',
  )
})

t.test("the runtime's node_modules are production dependencies from the lockfile, built on the runtime's base image", async (t) => {
  if (prodDepsStage === undefined) {
    t.fail('the runtime stage installs its node_modules, or copies them from an earlier stage of this Dockerfile')
    return
  }
  const where = prodDepsStage === runtime ? 'the runtime stage' : `stage ${prodDepsStage.name ?? '(unnamed)'}`
  t.ok(installsProdDeps(prodDepsStage), `a RUN in ${where} does npm ci --omit=dev`)
  const copiesLockfile = prodDepsStage.copies.some((copy) => copy.from === undefined && copy.sources.includes('package-lock.json'))
  t.ok(copiesLockfile, `${where} COPYs package-lock.json (npm ci needs it)`)
  // A native binding (better-sqlite3) is built for the Node of the image it is installed on.
  t.equal(prodDepsStage.image, runtime?.image, `${where} starts from the runtime's image, so native bindings match its Node`)
})

t.test('the runtime stage installs no build tools: compilers stay in the stage that builds native bindings', async (t) => {
  if (runtime === undefined) {
    t.fail('there is a final stage')
    return
  }
  const toolchain =
    /\b(apt-get|apt|apk|yum|dnf|microdnf)\b[^\n]*\b(install|add)\b|\b(python3?|make|g\+\+|gcc|cc|clang|build-essential|node-gyp)\b/
  t.same(
    runtime.runs.map((step) => step.command.argv.join(' ')).filter((text) => toolchain.test(text)),
    [],
    'no RUN in the runtime stage installs OS packages or runs a compiler toolchain',
  )
  t.equal(
    stageNamed(runtime.image),
    undefined,
    `the runtime stage starts from a node image, not from an earlier stage (FROM ${runtime.image})`,
  )
  for (const copy of runtime.copies) {
    if (copy.from === undefined) continue
    const stage = stageNamed(copy.from)
    if (stage === undefined) {
      t.fail(`COPY --from=${copy.from} names an earlier stage of this Dockerfile, not an image`)
      continue
    }
    const workdir = stage.workdir ?? '/'
    const outside = copy.sources.filter((src) => {
      const resolved = posix.resolve(copy.workdir, src)
      return workdir === '/' || !(resolved === workdir || resolved.startsWith(`${workdir}/`))
    })
    t.same(outside, [], `COPY --from=${copy.from} takes only files under that stage's WORKDIR (${workdir}), not its toolchain`)
  }
})

t.test("the runtime stage has /data, owned by its USER, for team mode's store (a volume)", async (t) => {
  const user = (runtime?.user ?? '').split(':')[0]
  // A COPY --chown rather than RUN mkdir/chown: the replay runs RUN lines on this machine, where
  // /data is not the image's.
  const copy = (runtime?.copies ?? []).find((c) => posix.resolve(c.workdir, c.dest) === '/data')
  t.ok(copy, 'a COPY creates /data')
  t.equal(copy?.chown?.split(':')[0], user, `/data is owned by the USER (${user})`)
})

// ---------------------------------------------------------------------------------------------
// The runtime stage, replayed on npm pack output
// ---------------------------------------------------------------------------------------------

t.test('the runtime stage, replayed on npm pack output, serves, opens the team store and shuts down cleanly', async (t) => {
  if (runtime === undefined || runtime.cmd === undefined) {
    t.fail('the Dockerfile has a runtime stage with a CMD')
    return
  }
  const { cmd } = runtime
  const hostEnv = cleanHostEnv()
  const tmp = mkdtempSync(join(tmpdir(), 'toprouter-proxy-docker-'))
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }))
  // The image's user (uid 1000 when this runs as root) must reach the replayed image and the config.
  chmodSync(tmp, 0o755)
  const userIds = imageIds(runtime.user)
  // The image's filesystem: WORKDIR /app is <rootfs>/app, /data is <rootfs>/data.
  const rootfs = join(tmp, 'rootfs')
  const appDir = hostPath(rootfs, '/', runtime.workdir ?? '/')
  mkdirSync(appDir, { recursive: true })
  const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as {
    files?: string[]
    dependencies?: Record<string, string>
    devDependencies?: Record<string, string>
  }
  const ignored = readFileSync(join(repoRoot, '.dockerignore'), 'utf8')
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))

  // `npm test` builds first (pretest); a direct `npx tap` run may find dist/ missing or stale.
  const distMain = join(repoRoot, 'dist', 'main.js')
  if (!existsSync(distMain) || statSync(distMain).mtimeMs < newestMtime(join(repoRoot, 'src'))) {
    const build = await run(['npm', 'run', 'build'], { cwd: repoRoot, env: hostEnv, timeoutMs: 120_000 })
    t.equal(build.code, 0, `npm run build succeeds\n${build.stdout}${build.stderr}`)
  }

  const packDir = join(tmp, 'pack')
  mkdirSync(packDir)
  const pack = await run(['npm', 'pack', '--json', '--pack-destination', packDir], { cwd: repoRoot, env: hostEnv, timeoutMs: 120_000 })
  t.equal(pack.code, 0, `npm pack succeeds${pack.code === 0 ? '' : `\n${pack.stderr}`}`)
  let packed: { filename: string; files: Array<{ path: string }> } | undefined
  try {
    packed = (JSON.parse(pack.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>)[0]
  } catch {
    packed = undefined
  }
  if (packed === undefined) {
    t.fail(`npm pack --json printed a package description, got: ${pack.stdout.slice(0, 500)}`)
    return
  }
  const packedFiles = packed.files.map((file) => file.path)

  await t.test('package.json "files" ships what the runtime needs', async (t) => {
    t.ok(pkg.files?.includes('dist') || pkg.files?.some((f) => f.startsWith('dist/')), '"files" lists dist')
    t.ok(packedFiles.includes('dist/main.js'), 'the package contains dist/main.js')
    t.ok(packedFiles.includes(cmd.argv[1] ?? ''), `the package contains the CMD entry point ${cmd.argv[1]}`)
    t.ok(packedFiles.includes('package.json'), 'the package contains package.json (main.ts reads its version)')
    t.same(
      packedFiles.filter((path) => /^(src|test|bench)\//.test(path)),
      [],
      'sources, tests and benchmarks are not shipped',
    )
  })

  // The package stands in for the build stage's output: its dist/ is what `npm run build` made.
  const packageDir = join(tmp, 'package')
  mkdirSync(packageDir)
  const tar = await run(['tar', '-xzf', join(packDir, packed.filename), '-C', packageDir, '--strip-components=1'], {
    cwd: tmp,
    env: hostEnv,
    timeoutMs: 60_000,
  })
  t.equal(tar.code, 0, `the tarball extracts${tar.code === 0 ? '' : `\n${tar.stderr}`}`)

  /** One RUN line, as `sh -c` (or exec form) from its WORKDIR, with a private npm cache. */
  const replayRun = async (t: Test, root: string, step: RunStep, as: Ids | undefined) => {
    // A private, empty npm cache: nothing is reused from this machine's installs, and the RUN lines
    // may `npm cache clean --force`, which must not wipe the host's.
    const env = { ...hostEnv, ...step.env, npm_config_cache: join(tmp, 'npm-cache') }
    const cwd = hostPath(root, '/', step.workdir)
    mkdirSync(cwd, { recursive: true })
    const result = await run(imageArgv(step.command.argv), { cwd, env, timeoutMs: 480_000, as })
    t.equal(result.code, 0, `RUN ${step.command.argv.join(' ')} exits 0${result.code === 0 ? '' : `\n${result.stdout}\n${result.stderr}`}`)
    t.notOk(result.timedOut, 'within the time limit')
  }

  /** COPY's sources as paths on this machine: the build context, or a replayed earlier stage. */
  const copySources = async (t: Test, copy: CopyStep): Promise<string[] | undefined> => {
    if (copy.from === undefined) {
      for (const src of copy.sources) {
        t.notOk(dockerignored(src, ignored), `${src} is in the build context (.dockerignore leaves it in)`)
        t.ok(existsSync(join(repoRoot, src)), `${src} exists in the build context`)
      }
      return copy.sources.map((src) => join(repoRoot, src))
    }
    const stage = stageNamed(copy.from)
    if (stage === undefined) {
      t.fail(`COPY --from=${copy.from} names an earlier stage (the replay copies from no image)`)
      return undefined
    }
    if (compiles(stage)) {
      // The build stage is not replayed: the package's dist/ is its output.
      const dist = posix.resolve(stage.workdir ?? '/', 'dist')
      const others = copy.sources.filter((src) => posix.resolve(copy.workdir, src) !== dist)
      t.same(others, [], `the replay takes only ${dist} from the build stage (the package's dist/)`)
      return others.length === 0 ? [join(packageDir, 'dist')] : undefined
    }
    const root = await replayedStage(t, stage)
    return root === undefined ? undefined : copy.sources.map((src) => hostPath(root, copy.workdir, src))
  }

  /** An earlier stage replayed from scratch into its own directory (once), e.g. the prod-deps install. */
  const replayed = new Map<StageDescription, Promise<string | undefined>>()
  const replayedStage = (t: Test, stage: StageDescription): Promise<string | undefined> => {
    let root = replayed.get(stage)
    if (root === undefined) {
      root = (async () => {
        const stageRoot = join(tmp, 'stages', stage.name ?? String(earlierStages.indexOf(stage)))
        let ok = false
        await t.test(`stage ${stage.name ?? '(unnamed)'}, replayed from scratch`, async (t) => {
          t.equal(stage.image, runtime.image, `it starts from the runtime's image (${runtime.image}); here that is this machine`)
          for (const step of stage.steps) {
            if (step.kind === 'copy') {
              const sources = await copySources(t, step.copy)
              if (sources === undefined) return
              const dest = hostPath(stageRoot, step.copy.workdir, step.copy.dest)
              for (const source of sources) copyInto(source, dest, step.copy.dest.endsWith('/') || sources.length > 1, undefined)
              continue
            }
            const packages = aptInstalls(step.run.command)
            if (packages !== undefined) {
              // Never apt-get on this machine: it must already have what the stage installs.
              for (const name of packages) {
                const found = await run(['sh', '-c', `command -v ${name}`], { cwd: tmp, env: hostEnv, timeoutMs: 10_000 })
                t.equal(found.code, 0, `this machine has ${name}, which the stage installs with apt-get`)
              }
              continue
            }
            await replayRun(t, stageRoot, step.run, undefined)
          }
          ok = t.passing()
        })
        return ok ? stageRoot : undefined
      })()
      replayed.set(stage, root)
    }
    return root
  }

  await t.test("the runtime stage's COPY and RUN lines install production dependencies only", async (t) => {
    for (const step of runtime.steps) {
      if (step.kind === 'run') {
        await replayRun(t, rootfs, step.run, undefined)
        continue
      }
      const { copy } = step
      const sources = await copySources(t, copy)
      if (sources === undefined) continue
      const dest = hostPath(rootfs, copy.workdir, copy.dest)
      for (const source of sources) {
        copyInto(source, dest, copy.dest.endsWith('/') || sources.length > 1, copy.chown === undefined ? undefined : imageIds(copy.chown))
      }
    }
    const nodeModules = join(appDir, 'node_modules')
    const devDependencies = Object.keys(pkg.devDependencies ?? {})
    t.ok(devDependencies.length > 0, 'package.json has devDependencies to leave out')
    t.same(
      devDependencies.filter((name) => existsSync(join(nodeModules, name))),
      [],
      'no devDependency (tap, typescript, autocannon, tsx, …) is installed',
    )
    const lock = JSON.parse(readFileSync(join(repoRoot, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, { dev?: boolean }>
    }
    const devOnly = Object.entries(lock.packages).filter(([path, info]) => path.startsWith('node_modules/') && info.dev === true)
    t.same(
      devOnly.map(([path]) => path).filter((path) => existsSync(join(appDir, path))),
      [],
      `none of the ${devOnly.length} dev-only lockfile packages is installed`,
    )
    t.same(
      Object.keys(pkg.dependencies ?? {}).filter((name) => !existsSync(join(nodeModules, name, 'package.json'))),
      [],
      'every dependency is installed',
    )
    t.ok(existsSync(join(appDir, cmd.argv[1] ?? '')), `the CMD entry point ${cmd.argv[1]} is in the image`)
  })

  // Like `docker run`: only the image's ENV plus what the operator passes, not this process's env.
  const imageEnv: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
    HOME: tmp,
    ...runtime.env,
  }
  mkdirSync(join(tmp, 'config'))

  /** `docker run IMAGE node dist/main.js keys create …`: the CLI in place of the CMD, as the image's user. */
  const createKey = async (t: Test, storeUrl: string, name: string) => {
    const configPath = join(tmp, 'config', `${name}.yaml`)
    writeFileSync(configPath, `team:\n  storeUrl: ${JSON.stringify(storeUrl)}\n`)
    const result = await run(imageArgv([...cmd.argv, 'keys', 'create', '--name', name, '--json']), {
      cwd: appDir,
      env: { ...imageEnv, TOPROUTER_PROXY_CONFIG: configPath },
      timeoutMs: 30_000,
      as: userIds,
    })
    t.equal(result.code, 0, `keys create exits 0${result.code === 0 ? '' : `\n${result.stderr.slice(0, 2000)}`}`)
    let record: { id?: unknown; name?: unknown } | undefined
    try {
      record = JSON.parse(result.stdout) as { id?: unknown; name?: unknown }
    } catch {
      record = undefined
    }
    t.match(record?.id, /^key_/, `it prints the new key as JSON, with an id key_… (stdout: ${result.stdout.slice(0, 300)})`)
    t.equal(record?.name, name)
  }

  await t.test("the image's CLI opens the team store: better-sqlite3's native binding loads", async (t) => {
    const storeDir = join(tmp, 'store')
    mkdirSync(storeDir)
    if (userIds !== undefined) chownTree(storeDir, userIds)
    await createKey(t, `sqlite:${join(storeDir, 't.db')}`, 'probe')
  })

  await t.test('`demo` runs in the image: the openai SDK it drives is a production dependency', async (t) => {
    const result = await run(imageArgv([...cmd.argv, 'demo']), { cwd: appDir, env: imageEnv, timeoutMs: 60_000, as: userIds })
    t.equal(result.code, 0, `demo exits 0${result.code === 0 ? '' : `\n${result.stdout.slice(-1500)}\n${result.stderr.slice(0, 1500)}`}`)
    t.match(result.stdout, /^status page \(live while the demo runs\): http:\/\/127\.0\.0\.1:\d+\/status$/m)
  })

  await t.test('the store on /data (a volume in the image) is writable by the image user', async (t) => {
    const data = hostPath(rootfs, '/', '/data')
    if (!existsSync(data)) {
      t.fail('the image has /data')
      return
    }
    if (userIds === undefined) t.comment('not root: the CLI runs as this user, so /data ownership is checked by the structure test only')
    await createKey(t, `sqlite:${join(data, 'toprouter-proxy.db')}`, 'data-probe')
  })

  const upstream = await startFakeUpstream(t, (_req, res, recorded) => {
    if (recorded.url === '/chat/completions') sendJson(res, 200, completion())
    else sendJson(res, 404, { error: { message: 'not found' } })
  })

  // The config is mounted, like -v ./config.yaml:/config/config.yaml:ro. Its upstream.baseUrl points
  // at a closed port: TOPROUTER_BASE_URL (environment beats file) must win.
  const configPath = join(tmp, 'config', 'config.yaml')
  writeFileSync(
    configPath,
    [
      '# mounted config, as in the container at /config/config.yaml',
      'upstream:',
      '  baseUrl: http://127.0.0.1:9',
      'server:',
      '  bodyLimitBytes: 2048',
      '  drainTimeoutMs: 5000',
      'log:',
      '  level: info',
      '',
    ].join('\n'),
  )

  const port = await freePort()
  const apiKey = 'sk-docker-test-key-0123456789'
  const containerEnv: Record<string, string> = {
    ...imageEnv,
    HOST: '127.0.0.1',
    PORT: String(port),
    TOPROUTER_BASE_URL: upstream.url,
    TOPROUTER_API_KEY: apiKey,
    TOPROUTER_PROXY_CONFIG: configPath,
  }
  const [file, args] = resolveArgv(imageArgv(cmd.argv))
  const child = spawn(file, args, { cwd: appDir, env: containerEnv, stdio: ['ignore', 'pipe', 'pipe'], ...userIds })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  const base = `http://127.0.0.1:${port}`

  await t.test('the CMD starts the proxy and /healthz answers 200 within 10 s', async (t) => {
    const deadline = Date.now() + 10_000
    let status: number | undefined
    let body = ''
    while (Date.now() < deadline && child.exitCode === null && child.signalCode === null) {
      try {
        const res = await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(1000) })
        status = res.status
        body = await res.text()
        if (status === 200) break
      } catch {
        // not listening yet
      }
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    t.equal(status, 200, `/healthz answers 200 (exit code ${child.exitCode}, stderr: ${stderr.slice(0, 1000)})`)
    t.same(body === '' ? undefined : (JSON.parse(body) as unknown), { status: 'ok' })
    t.match(stdout, /listening/, 'the startup line is logged')
  })

  await t.test("the Dockerfile's HEALTHCHECK command exits 0 against the running proxy", async (t) => {
    const healthcheck = runtime.healthcheck
    if (healthcheck === undefined || healthcheck === 'NONE') {
      t.fail('the Dockerfile has a HEALTHCHECK command')
      return
    }
    const timeoutMs = durationMs(healthcheck.options.timeout ?? '30s')
    const result = await run(imageArgv(healthcheck.command.argv), { cwd: appDir, env: containerEnv, timeoutMs, as: userIds })
    t.notOk(result.timedOut, `finishes within the HEALTHCHECK --timeout (${timeoutMs} ms)`)
    t.equal(result.code, 0, `exit code 0${result.code === 0 ? '' : `\n${result.stderr}`}`)
  })

  await t.test('the mounted config and the environment are both applied', async (t) => {
    const ok = await fetch(`${base}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer dummy' },
      body: JSON.stringify({ model: 'google/gemini-3.5-flash', messages: [{ role: 'user', content: 'hi' }] }),
    })
    t.equal(ok.status, 200, 'a completion is forwarded to TOPROUTER_BASE_URL (environment beats the file)')
    await ok.arrayBuffer()
    t.equal(upstream.requests.length, 1, 'the fake upstream got the request')
    t.equal(upstream.requests[0]?.headers.authorization, `Bearer ${apiKey}`, 'TOPROUTER_API_KEY replaces the client key')

    const tooLarge = await fetch(`${base}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer dummy' },
      body: JSON.stringify({ model: 'google/gemini-3.5-flash', messages: [{ role: 'user', content: 'x'.repeat(4096) }] }),
    })
    t.equal(tooLarge.status, 413, 'server.bodyLimitBytes from the mounted file applies (the default is 10 MiB)')
    await tooLarge.arrayBuffer()
    t.equal(upstream.requests.length, 1, 'the oversized request never reached the upstream')
    t.notOk(stdout.includes(apiKey) || stderr.includes(apiKey), 'the API key never appears in the logs')
  })

  await t.test('SIGTERM makes node (PID 1 in the image) drain and exit 0 within 5 s', async (t) => {
    t.ok(child.exitCode === null && child.signalCode === null, 'the proxy is still running before the signal')
    child.kill('SIGTERM')
    const exit = await waitForExit(child, 5000)
    t.not(exit, 'timeout', 'the process exits within 5 s')
    if (exit !== 'timeout') {
      t.equal(exit.signal, null, 'it exits by itself rather than being killed by the signal')
      t.equal(exit.code, 0, `exit code 0${exit.code === 0 ? '' : `\nstderr: ${stderr.slice(0, 1000)}`}`)
    }
    t.match(stdout, /drain/, 'the drain is logged')
  })

  await t.test('the HEALTHCHECK command fails once the proxy is gone', async (t) => {
    const healthcheck = runtime.healthcheck
    if (healthcheck === undefined || healthcheck === 'NONE') {
      t.fail('the Dockerfile has a HEALTHCHECK command')
      return
    }
    const result = await run(imageArgv(healthcheck.command.argv), { cwd: appDir, env: containerEnv, timeoutMs: 10_000, as: userIds })
    t.not(result.code, 0, 'a non-zero exit code marks the container unhealthy')
  })
})
