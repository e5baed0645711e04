import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, isAbsolute, join, posix, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parse } from 'yaml'
import { CONFIG_SCHEMA, type Config, loadConfig } from '../src/config.js'
import { runTeamCli } from '../src/team/cli.js'

/**
 * docker-compose.team.example.yaml, checked without a Docker engine (there is none in CI): the file
 * is parsed, its ${…} interpolation is done with a sample value per variable, and every file,
 * service, environment variable and port it names is checked against the repository — the Dockerfile
 * (its runtime stage's ENV, HEALTHCHECK and CMD), the real config loader on the mounted config file,
 * and the nginx.conf it mounts (parsed here). The header's commands are checked too, and the
 * `keys create` it shows is run through the real CLI (on a temp SQLite store instead of PostgreSQL).
 */

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const COMPOSE_FILE = 'docker-compose.team.example.yaml'
const composeText = readFileSync(join(ROOT, COMPOSE_FILE), 'utf8')
const GATEWAYS = ['gateway-a', 'gateway-b'] as const
const SERVICES = [...GATEWAYS, 'redis', 'postgres', 'nginx']
/** The upstream key, the admin key: always from a required ${VAR:?…}, never a literal. */
const SECRET_VARIABLES = ['TOPROUTER_API_KEY', 'TOPROUTER_PROXY_ADMIN_KEY']

type Yaml = Record<string, unknown>

const isMap = (value: unknown): value is Yaml => typeof value === 'object' && value !== null && !Array.isArray(value)
const asMap = (value: unknown): Yaml => (isMap(value) ? value : {})

// ---------------------------------------------------------------------------------------------
// Compose: interpolation, and the few attribute syntaxes this file may use (short and long forms).
// ---------------------------------------------------------------------------------------------

/** $$ (a literal $), ${VAR}, ${VAR:?msg}, ${VAR?msg}, ${VAR:-default}, ${VAR-default}, ${VAR:+alt}, $VAR. */
const REFERENCE = /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[?+-])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g

interface Reference {
  readonly name: string
  /** ':?', '?', ':-', '-', ':+', '+' or undefined. */
  readonly operator: string | undefined
  readonly argument: string | undefined
}

function references(value: string): Reference[] {
  return [...value.matchAll(REFERENCE)].flatMap((match) =>
    match[0] === '$$' ? [] : [{ name: match[1] ?? match[4] ?? '', operator: match[2], argument: match[3] }],
  )
}

/** Distinct per variable (so a value can be traced back to the variable it came from), URL-safe, ≥ 16 characters. */
const sampleValue = (name: string) => `sample-${name.toLowerCase().replaceAll('_', '-')}-0123456789`

/** Every variable is taken as set, to its sample value: defaults do not apply, ${VAR:+alt} gives alt. */
function interpolate(value: string): string {
  return value.replace(REFERENCE, (whole: string, braced?: string, operator?: string, argument?: string, bare?: string) => {
    if (whole === '$$') return '$'
    if (operator === ':+' || operator === '+') return argument ?? ''
    return sampleValue(braced ?? bare ?? '')
  })
}

function interpolateAll(value: unknown): unknown {
  if (typeof value === 'string') return interpolate(value)
  if (Array.isArray(value)) return value.map(interpolateAll)
  if (isMap(value)) return Object.fromEntries(Object.entries(value).map(([key, child]) => [key, interpolateAll(child)]))
  return value
}

function allStrings(value: unknown): string[] {
  if (typeof value === 'string') return [value]
  if (Array.isArray(value)) return value.flatMap(allStrings)
  if (isMap(value)) return Object.values(value).flatMap(allStrings)
  return []
}

/** `environment:` as a mapping or a KEY=VALUE list; undefined = passed through from the host. */
function environmentOf(service: Yaml): Record<string, string | undefined> {
  const env = service.environment
  if (Array.isArray(env)) {
    return Object.fromEntries(
      env.map(String).map((entry) => {
        const eq = entry.indexOf('=')
        return eq < 0 ? [entry, undefined] : [entry.slice(0, eq), entry.slice(eq + 1)]
      }),
    )
  }
  return Object.fromEntries(
    Object.entries(asMap(env)).map(([key, value]) => [key, value === null || value === undefined ? undefined : String(value)]),
  )
}

interface Mount {
  readonly type: string
  readonly source: string
  readonly target: string
}

function mountsOf(service: Yaml): Mount[] {
  const volumes = Array.isArray(service.volumes) ? service.volumes : []
  return volumes.map((entry): Mount => {
    if (isMap(entry))
      return { type: String(entry.type ?? 'volume'), source: String(entry.source ?? ''), target: String(entry.target ?? '') }
    const [source = '', target] = String(entry).split(':') // source:target[:mode]
    if (target === undefined) return { type: 'volume', source: '', target: source } // an anonymous volume
    return { type: /^[./~]/.test(source) ? 'bind' : 'volume', source, target }
  })
}

interface Port {
  readonly hostIp: string | undefined
  readonly published: string | undefined
  readonly target: number
}

function portsOf(service: Yaml): Port[] {
  const ports = Array.isArray(service.ports) ? service.ports : []
  return ports.map((entry): Port => {
    if (isMap(entry)) {
      return {
        hostIp: entry.host_ip === undefined ? undefined : String(entry.host_ip),
        published: entry.published === undefined ? undefined : String(entry.published),
        target: Number(entry.target),
      }
    }
    const parts = (String(entry).split('/')[0] ?? '').split(':')
    return {
      hostIp: parts.length === 3 ? parts[0] : undefined,
      published: parts.length >= 2 ? parts.at(-2) : undefined,
      target: Number(parts.at(-1)),
    }
  })
}

/** depends_on as a list or a mapping → service → condition. */
function dependsOnOf(service: Yaml): Map<string, string> {
  const deps = service.depends_on
  if (Array.isArray(deps)) return new Map(deps.map((name) => [String(name), 'service_started']))
  return new Map(Object.entries(asMap(deps)).map(([name, spec]) => [name, String(asMap(spec).condition ?? 'service_started')]))
}

/** A Compose (Go) duration such as 35s, 1m30s or 500ms, in ms; undefined if it is not one. */
function durationMs(value: unknown): number | undefined {
  if (typeof value !== 'string' || !/^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/.test(value)) return undefined
  const unitMs: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
  return [...value.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)].reduce(
    (sum, [, n, unit]) => sum + Number(n) * (unitMs[unit ?? ''] ?? 0),
    0,
  )
}

function buildContextOf(service: Yaml): { context: string; dockerfile: string } | undefined {
  const build = service.build
  if (typeof build === 'string') return { context: build, dockerfile: 'Dockerfile' }
  if (isMap(build)) return { context: String(build.context ?? '.'), dockerfile: String(build.dockerfile ?? 'Dockerfile') }
  return undefined
}

const hostPath = (path: string) => resolve(ROOT, path)

// ---------------------------------------------------------------------------------------------
// Dockerfile: the runtime (last) stage's ENV, HEALTHCHECK and CMD.
// ---------------------------------------------------------------------------------------------

function runtimeStage(dockerfilePath: string): { env: Record<string, string>; healthcheck: string | undefined; cmd: string | undefined } {
  const lines: string[] = []
  let buffer = ''
  for (const raw of readFileSync(dockerfilePath, 'utf8').split(/\r?\n/)) {
    if (/^\s*#/.test(raw) || raw.trim() === '') continue
    const line = raw.replace(/\s+$/, '')
    if (line.endsWith('\\')) buffer += `${line.slice(0, -1)} `
    else {
      lines.push((buffer + line).trim())
      buffer = ''
    }
  }
  const froms = lines.flatMap((line, index) => (/^FROM\s/i.test(line) ? [index] : []))
  const stage = lines.slice((froms.at(-1) ?? -1) + 1)
  const env: Record<string, string> = {}
  for (const line of stage.filter((l) => /^ENV\s/i.test(l))) {
    const args = line.replace(/^ENV\s+/i, '')
    if (!/^\S+=/.test(args)) {
      const [key = '', ...value] = args.split(/\s+/) // the legacy `ENV KEY value` form
      env[key] = value.join(' ')
      continue
    }
    for (const [, key = '', value = ''] of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|'[^']*'|\S*)/g)) {
      env[key] = /^["']/.test(value) ? value.slice(1, -1) : value
    }
  }
  const last = (keyword: string) => stage.filter((line) => new RegExp(`^${keyword}\\s`, 'i').test(line)).at(-1)
  return { env, healthcheck: last('HEALTHCHECK'), cmd: last('CMD') }
}

// ---------------------------------------------------------------------------------------------
// nginx.conf: a small parser (directives, blocks, quotes, comments) and nginx's inheritance rule.
// ---------------------------------------------------------------------------------------------

interface Directive {
  readonly name: string
  readonly args: string[]
  readonly block: Directive[] | undefined
  readonly line: number
}

function parseNginx(text: string): Directive[] {
  const tokens: Array<{ value: string; special: boolean; line: number }> = []
  let line = 1
  for (let i = 0; i < text.length; ) {
    const c = text[i] ?? ''
    if (c === '\n') line++
    if (/\s/.test(c)) {
      i++
    } else if (c === '#') {
      while (i < text.length && text[i] !== '\n') i++
    } else if (c === '{' || c === '}' || c === ';') {
      tokens.push({ value: c, special: true, line })
      i++
    } else if (c === '"' || c === "'") {
      let value = ''
      for (i++; i < text.length && text[i] !== c; i++) {
        if (text[i] === '\\' && i + 1 < text.length) i++
        if (text[i] === '\n') line++
        value += text[i]
      }
      if (i >= text.length) throw new Error(`an unterminated ${c} string on line ${line}`)
      i++
      tokens.push({ value, special: false, line })
    } else {
      let value = ''
      for (; i < text.length && !/[\s{};]/.test(text[i] ?? ''); i++) value += text[i]
      tokens.push({ value, special: false, line })
    }
  }
  let pos = 0
  const parseBlock = (nested: boolean): Directive[] => {
    const out: Directive[] = []
    while (pos < tokens.length) {
      const token = tokens[pos++]!
      if (token.special && token.value === '}' && nested) return out
      if (token.special) throw new Error(`unexpected "${token.value}" on line ${token.line}`)
      const args: string[] = []
      while (pos < tokens.length && !tokens[pos]!.special) args.push(tokens[pos++]!.value)
      const end = tokens[pos++]
      if (end?.value === '{') out.push({ name: token.value, args, block: parseBlock(true), line: token.line })
      else if (end?.value === ';') out.push({ name: token.value, args, block: undefined, line: token.line })
      else throw new Error(`"${token.value}" on line ${token.line} does not end with ; or {`)
    }
    if (nested) throw new Error('a { is never closed')
    return out
  }
  return parseBlock(false)
}

const named = (block: readonly Directive[], name: string) => block.filter((d) => d.name === name)

/** Every block that holds a proxy_pass, as the chain of blocks from the file's top level down to it. */
function proxyingChains(top: Directive[]): Directive[][][] {
  const out: Directive[][][] = []
  const visit = (chain: Directive[][]) => {
    const inner = chain.at(-1) ?? []
    if (named(inner, 'proxy_pass').length > 0) out.push(chain)
    for (const d of inner) if (d.block !== undefined) visit([...chain, d.block])
  }
  visit([top])
  return out
}

/**
 * nginx's inheritance: a block inherits a directive only if it does not set it itself — and for
 * array directives such as proxy_set_header, a block that sets any of them inherits none.
 */
function effective(chain: readonly Directive[][], name: string): Directive[] {
  for (let k = chain.length - 1; k >= 0; k--) {
    const found = named(chain[k] ?? [], name)
    if (found.length > 0) return found
  }
  return []
}

/** An nginx time (60s, 10m, 500ms, 1h; bare = seconds) in ms. */
function nginxTimeMs(value: string | undefined, fallback: string): number {
  const match = /^(\d+)(ms|s|m|h|d)?$/.exec(value ?? fallback)
  if (match === null) throw new Error(`cannot read the nginx time ${JSON.stringify(value)}`)
  return Number(match[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2] ?? 's']!
}

/** An nginx size (11m, 512k, 1g; bare = bytes) in bytes. */
function nginxBytes(value: string | undefined, fallback: string): number {
  const match = /^(\d+)([kKmMgG])?$/.exec(value ?? fallback)
  if (match === null) throw new Error(`cannot read the nginx size ${JSON.stringify(value)}`)
  return Number(match[1]) * { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(match[2] ?? '').toLowerCase()]!
}

/** host:port of an upstream `server` (port 80 when absent). */
function hostAndPort(address: string): { host: string; port: number } {
  const match = /^([^:]+)(?::(\d+))?$/.exec(address)
  return { host: match?.[1] ?? address, port: Number(match?.[2] ?? 80) }
}

/** An image tag's version as numbers (nginx:1.28 → [1, 28]); undefined for latest, stable, … */
function imageVersion(image: string): number[] | undefined {
  const match = /:(\d+(?:\.\d+)*)(?:-|$)/.exec(image)
  return match?.[1]?.split('.').map(Number)
}

const atLeast = (version: readonly number[], minimum: readonly number[]) => {
  for (let i = 0; i < minimum.length; i++) {
    const [v, m] = [version[i] ?? 0, minimum[i] ?? 0]
    if (v !== m) return v > m
  }
  return true
}

// ---------------------------------------------------------------------------------------------
// What the proxy reads from its environment, from its source (config.ts is where it is read).
// ---------------------------------------------------------------------------------------------

function variablesTheProxyReads(): Set<string> {
  const names = new Set<string>()
  const visit = (dir: string) => {
    for (const entry of readdirSync(dir)) {
      const path = join(dir, entry)
      if (statSync(path).isDirectory()) visit(path)
      else if (path.endsWith('.ts')) {
        const source = readFileSync(path, 'utf8')
        // env.NAME / process.env.NAME, and config.ts's envOverrides rows: ['NAME', 'section.key', …].
        for (const [, name = ''] of source.matchAll(/\benv\.([A-Z][A-Z0-9_]*)\b/g)) names.add(name)
        for (const [, name = ''] of source.matchAll(/\['([A-Z][A-Z0-9_]*)',\s*'[a-z]+\.[A-Za-z]+'/g)) names.add(name)
      }
    }
  }
  visit(join(ROOT, 'src'))
  return names
}

// ---------------------------------------------------------------------------------------------
// The file, parsed once.
// ---------------------------------------------------------------------------------------------

// merge: Compose honours YAML merge keys (<<: *anchor), which the yaml package does only when asked.
const rawDoc = asMap(parse(composeText, { merge: true }))
const doc = asMap(interpolateAll(rawDoc))
const rawServices = asMap(rawDoc.services)
const services = asMap(doc.services)
const service = (name: string) => asMap(services[name])
const serviceNames = Object.keys(services)
const headerLines = composeText
  .split('\n')
  .filter((line) => line.startsWith('#'))
  .map((line) => line.replace(/^#\s?/, ''))

/** The repository's Dockerfile, which the gateways are checked to build. */
const dockerfile = runtimeStage(join(ROOT, 'Dockerfile'))

/** The service whose image is `<prefix>:…` (postgres, redis, nginx). */
const byImage = (prefix: string) => serviceNames.find((name) => String(service(name).image ?? '').startsWith(`${prefix}:`))

/** A gateway's environment as the container sees it: the image's ENV, then the compose file's (interpolated). */
function containerEnv(name: string): Record<string, string> {
  const env: Record<string, string> = { ...dockerfile.env }
  for (const [key, value] of Object.entries(environmentOf(service(name)))) env[key] = value ?? sampleValue(key)
  return env
}

/** A container path → the host file mounted there (a bind mount of it or of a directory above it). */
function hostFileFor(name: string, containerPath: string): string | undefined {
  for (const mount of mountsOf(service(name))) {
    if (mount.type !== 'bind') continue
    if (containerPath === mount.target) return hostPath(mount.source)
    const rel = posix.relative(mount.target, containerPath)
    if (!rel.startsWith('..') && !posix.isAbsolute(rel)) return join(hostPath(mount.source), rel)
  }
  return undefined
}

/** The gateway's config exactly as its container would load it. */
function gatewayConfig(name: string): Config {
  const env = containerEnv(name)
  return loadConfig({
    env,
    readFile: (path) => {
      const file = hostFileFor(name, path)
      if (file === undefined) throw new Error(`${path} is not mounted into ${name}`)
      return readFileSync(file, 'utf8')
    },
  })
}

const schemaDefault = (section: string, key: string) =>
  (CONFIG_SCHEMA.properties as unknown as Record<string, { properties?: Record<string, { default?: unknown }> }>)[section]?.properties?.[
    key
  ]?.default

// ---------------------------------------------------------------------------------------------

t.test('the five services, and only Compose top-level keys', async (t) => {
  t.same([...serviceNames].sort(), [...SERVICES].sort(), `${COMPOSE_FILE} defines exactly ${SERVICES.join(', ')}`)
  for (const key of Object.keys(rawDoc)) {
    t.ok(
      ['services', 'volumes', 'networks', 'configs', 'secrets', 'name'].includes(key) || key.startsWith('x-'),
      `top-level key "${key}" is one Compose knows`,
    )
  }
  t.match(String(service('redis').image), /^redis:7\b/, 'redis runs the redis:7 image')
  t.match(String(service('postgres').image), /^postgres:1[5-9]\b/, 'postgres runs a postgres:15 or later image')
  t.match(String(service('nginx').image), /^nginx:/, 'nginx runs the nginx image')
})

t.test('every host path the file names exists in the repository', async (t) => {
  const namedVolumes = Object.keys(asMap(doc.volumes))
  for (const name of serviceNames) {
    const build = buildContextOf(service(name))
    if (build !== undefined) {
      t.ok(
        existsSync(hostPath(build.context)) && statSync(hostPath(build.context)).isDirectory(),
        `${name}: build context ${build.context} is a directory`,
      )
      t.ok(
        existsSync(join(hostPath(build.context), build.dockerfile)),
        `${name}: ${build.dockerfile} exists in the build context ${build.context}`,
      )
    }
    for (const mount of mountsOf(service(name))) {
      if (mount.type === 'bind') {
        t.ok(
          !isAbsolute(mount.source) && !mount.source.startsWith('~'),
          `${name}: bind mount ${mount.source} is relative to the repository`,
        )
        t.ok(
          existsSync(hostPath(mount.source)),
          `${name}: bind mount source ${mount.source} exists (${relative(ROOT, hostPath(mount.source))})`,
        )
      } else if (mount.source !== '') {
        t.ok(namedVolumes.includes(mount.source), `${name}: named volume ${mount.source} is declared under the top-level volumes:`)
      }
    }
    const envFiles = service(name).env_file
    for (const file of allStrings(envFiles)) t.ok(existsSync(hostPath(file)), `${name}: env_file ${file} exists`)
  }
})

t.test('the gateways: built from this repository, their mounted config loads and agrees with the rest', async (t) => {
  const postgres = byImage('postgres')
  const redis = byImage('redis')
  const upstreams = nginxUpstreamServers()
  const dockerPort = dockerfile.env.PORT
  t.match(dockerPort, /^\d+$/, "the Dockerfile's runtime stage sets ENV PORT=<number>")
  t.equal(dockerfile.env.HOST, '0.0.0.0', "the Dockerfile's runtime stage sets ENV HOST=0.0.0.0 (reachable from nginx)")
  for (const name of GATEWAYS) {
    const spec = service(name)
    const build = buildContextOf(spec)
    const builtBySibling = GATEWAYS.some(
      (other) =>
        other !== name && buildContextOf(service(other)) !== undefined && service(other).image === spec.image && spec.image !== undefined,
    )
    t.ok(
      (build !== undefined && hostPath(build.context) === hostPath('.') && build.dockerfile === 'Dockerfile') || builtBySibling,
      `${name}: builds this repository's Dockerfile (build: .) or runs the image another gateway builds`,
    )
    const configPath = containerEnv(name).TOPROUTER_PROXY_CONFIG
    t.ok(configPath, `${name}: TOPROUTER_PROXY_CONFIG names the mounted config`)
    if (configPath === undefined) continue
    const hostFile = hostFileFor(name, configPath)
    t.ok(hostFile !== undefined && existsSync(hostFile), `${name}: ${configPath} is bind-mounted from a file in the repository`)

    let config: Config
    try {
      config = gatewayConfig(name)
    } catch (err: unknown) {
      t.fail(`${name}: the config loader accepts the mounted ${configPath} with the service's environment: ${(err as Error).message}`)
      continue
    }
    t.pass(
      `${name}: the config loader accepts ${hostFile === undefined ? configPath : relative(ROOT, hostFile)} with the service's environment`,
    )
    t.equal(config.team.enabled, true, `${name}: team.enabled is true`)
    t.equal(config.apiKey, sampleValue('TOPROUTER_API_KEY'), `${name}: the upstream key comes from TOPROUTER_API_KEY`)
    t.equal(config.adminKey, sampleValue('TOPROUTER_PROXY_ADMIN_KEY'), `${name}: the admin key comes from TOPROUTER_PROXY_ADMIN_KEY`)

    const store = new URL(config.team.storeUrl)
    t.match(store.protocol, /^postgres(ql)?:$/, `${name}: team.storeUrl is a postgres:// URL`)
    t.equal(store.hostname, postgres, `${name}: team.storeUrl's host is the postgres service (${postgres})`)
    t.equal(store.port || '5432', '5432', `${name}: team.storeUrl's port is PostgreSQL's 5432`)
    t.ok(config.team.redisUrl !== '', `${name}: team.redisUrl is set (limits shared by the replicas)`)
    if (config.team.redisUrl !== '') {
      const redisUrl = new URL(config.team.redisUrl)
      t.equal(redisUrl.protocol, 'redis:', `${name}: team.redisUrl is a redis:// URL`)
      t.equal(redisUrl.hostname, redis, `${name}: team.redisUrl's host is the redis service (${redis})`)
      t.equal(redisUrl.port || '6379', '6379', `${name}: team.redisUrl's port is Redis's 6379`)
    }

    t.equal(config.listen.host, '0.0.0.0', `${name}: listens on 0.0.0.0, so nginx reaches it`)
    t.equal(String(config.listen.port), dockerPort, `${name}: listens on the Dockerfile's PORT (${dockerPort}), which its HEALTHCHECK uses`)
    const upstream = upstreams.filter((server) => server.host === name)
    t.equal(upstream.length, 1, `${name}: nginx's upstream block names it once`)
    for (const server of upstream)
      t.equal(server.port, config.listen.port, `${name}: nginx's upstream uses the port it listens on (${config.listen.port})`)

    const fromFileOnly = loadConfig({ configPath: hostFile ?? configPath, forServing: false })
    for (const key of ['storeUrl', 'redisUrl'] as const) {
      const value = fromFileOnly.team[key]
      t.notOk(
        /^[a-z]+:\/\/[^/@]*:[^/@]*@/.test(value),
        `${name}: the mounted file's team.${key} holds no password (it comes from the environment)`,
      )
    }
  }
})

t.test('a gateway gets only environment variables the proxy reads', async (t) => {
  const known = variablesTheProxyReads()
  for (const name of ['TOPROUTER_API_KEY', 'TOPROUTER_PROXY_ADMIN_KEY', 'TOPROUTER_PROXY_CONFIG', 'TOPROUTER_PROXY_STORE_URL', 'PORT']) {
    t.ok(known.has(name), `src/ reads ${name} (a sanity check of how this test finds them)`)
  }
  for (const gateway of GATEWAYS) {
    for (const variable of Object.keys(environmentOf(service(gateway)))) {
      t.ok(known.has(variable), `${gateway}: ${variable} is one the proxy reads`, { theProxyReads: [...known].sort() })
    }
  }
})

t.test(`secrets come from required \${VAR:?…} interpolation, never a literal`, async (t) => {
  const required = /^\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]*\S[^}]*\}$/
  for (const gateway of GATEWAYS) {
    const env = environmentOf(asMap(rawServices[gateway]))
    for (const secret of SECRET_VARIABLES) {
      t.match(env[secret] ?? '', required, `${gateway}: ${secret} is \${${secret}:?message}, so compose refuses to start without it`)
      t.equal(required.exec(env[secret] ?? '')?.[1], secret, `${gateway}: ${secret} comes from the host variable of the same name`)
    }
    const interpolated = environmentOf(service(gateway))
    for (const variable of ['TOPROUTER_PROXY_STORE_URL', 'TOPROUTER_PROXY_REDIS_URL']) {
      const value = interpolated[variable]
      if (value === undefined) continue
      const password = decodeURIComponent(new URL(value).password)
      const fromVariables = references(env[variable] ?? '').map((ref) => sampleValue(ref.name))
      t.ok(
        password === '' || fromVariables.includes(password),
        `${gateway}: ${variable}'s password (if any) comes from a variable, not a literal`,
      )
    }
  }
  const postgresPassword = environmentOf(asMap(rawServices.postgres)).POSTGRES_PASSWORD ?? ''
  t.match(postgresPassword, required, `postgres: POSTGRES_PASSWORD is \${VAR:?message}`)

  // Compose interpolates the whole file before it starts anything, so one :? per variable is enough —
  // but every variable needs one (or a default): an unset variable would otherwise be an empty string.
  const all = allStrings(rawDoc).flatMap(references)
  const requiredNames = new Set(all.filter((ref) => ref.operator === ':?' || ref.operator === '?').map((ref) => ref.name))
  for (const name of new Set(all.map((ref) => ref.name))) {
    const uses = all.filter((ref) => ref.name === name)
    t.ok(
      requiredNames.has(name) || uses.every((ref) => ref.operator === ':-' || ref.operator === '-'),
      `\${${name}} is required somewhere in the file with \${${name}:?…} (or always has a default)`,
    )
  }
  const exported = new Set(headerLines.flatMap((line) => [...(/^\s*export\s+([A-Za-z_][A-Za-z0-9_]*)=/.exec(line)?.slice(1) ?? [])]))
  t.same([...exported].sort(), [...requiredNames].sort(), "the header's export lines set exactly the variables the file requires")
})

t.test('postgres agrees with the gateways’ store URL', async (t) => {
  const postgres = service('postgres')
  const env = environmentOf(postgres)
  const rawPassword = environmentOf(asMap(rawServices.postgres)).POSTGRES_PASSWORD ?? ''
  const passwordVariable = references(rawPassword)[0]?.name
  t.ok(passwordVariable, 'POSTGRES_PASSWORD comes from a variable')
  for (const gateway of GATEWAYS) {
    const store = new URL(environmentOf(service(gateway)).TOPROUTER_PROXY_STORE_URL ?? 'missing:')
    t.equal(
      decodeURIComponent(store.username),
      env.POSTGRES_USER,
      `${gateway}: the store URL's user is POSTGRES_USER (${env.POSTGRES_USER})`,
    )
    t.equal(
      decodeURIComponent(store.pathname.slice(1)),
      env.POSTGRES_DB ?? env.POSTGRES_USER,
      `${gateway}: the store URL's database is POSTGRES_DB`,
    )
    t.equal(
      decodeURIComponent(store.password),
      sampleValue(passwordVariable ?? '?'),
      `${gateway}: the store URL's password is \${${passwordVariable}}, as POSTGRES_PASSWORD is`,
    )
  }
  const mounts = mountsOf(postgres)
  t.ok(
    mounts.some((mount) => mount.type === 'volume' && mount.source !== '' && mount.target.startsWith('/var/lib/postgresql')),
    'postgres keeps its data on a named volume under /var/lib/postgresql',
  )
  const test = allStrings(asMap(postgres.healthcheck).test)
  t.ok(test.includes('pg_isready') || test.some((part) => part.includes('pg_isready')), 'postgres: the healthcheck runs pg_isready')
  const argAfter = (flag: string) => test[test.indexOf(flag) + 1]
  if (test.includes('-U')) t.equal(argAfter('-U'), env.POSTGRES_USER, 'pg_isready -U is POSTGRES_USER')
  if (test.includes('-d')) t.equal(argAfter('-d'), env.POSTGRES_DB, 'pg_isready -d is POSTGRES_DB')
})

t.test('redis: a healthcheck with redis-cli ping', async (t) => {
  const test = allStrings(asMap(service('redis').healthcheck).test).join(' ')
  t.match(test, /redis-cli( .*)? ping/, 'the redis healthcheck runs redis-cli ping')
})

/** nginx's mounted conf, parsed. */
function nginxConf(): { top: Directive[]; target: string; file: string } {
  const mount = mountsOf(service('nginx')).find(
    (m) => m.type === 'bind' && /^\/etc\/nginx\/(nginx\.conf|conf\.d\/[^/]+\.conf)$/.test(m.target),
  )
  if (mount === undefined) throw new Error('nginx mounts no conf on /etc/nginx/nginx.conf or /etc/nginx/conf.d/*.conf')
  const file = hostPath(mount.source)
  return { top: parseNginx(readFileSync(file, 'utf8')), target: mount.target, file }
}

/** The http block (the top level itself for a conf.d file). */
function httpBlock(): Directive[] {
  const { top, target } = nginxConf()
  return target === '/etc/nginx/nginx.conf' ? (named(top, 'http')[0]?.block ?? []) : top
}

function nginxUpstreamServers(): Array<{ upstream: string; host: string; port: number; params: string[] }> {
  return named(httpBlock(), 'upstream').flatMap((upstream) =>
    named(upstream.block ?? [], 'server').map((server) => ({
      upstream: upstream.args[0] ?? '',
      ...hostAndPort(server.args[0] ?? ''),
      params: server.args.slice(1),
    })),
  )
}

t.test("nginx's conf: both gateways upstream, streams and keep-alive, limits above the gateways'", async (t) => {
  const { top, target, file } = nginxConf()
  t.pass(`nginx mounts ${relative(ROOT, file)} on ${target} and it parses`)
  if (target === '/etc/nginx/nginx.conf') {
    t.equal(named(top, 'events').length, 1, 'a whole nginx.conf has an events block')
    t.equal(named(top, 'http').length, 1, 'a whole nginx.conf has an http block')
  }
  const http = httpBlock()
  const upstreams = named(http, 'upstream')
  const servers = nginxUpstreamServers()
  t.same(
    [...new Set(servers.map((s) => s.host))].sort(),
    [...GATEWAYS].sort(),
    `the upstream servers are the gateways ${GATEWAYS.join(' and ')}, services of ${COMPOSE_FILE}`,
  )
  for (const server of servers)
    t.ok(serviceNames.includes(server.host), `upstream server ${server.host}:${server.port} is a service of the compose file`)
  // The limits nginx must stay above (or below), over both gateways.
  const configs = GATEWAYS.map(gatewayConfig)
  const longestWait = Math.max(
    ...configs.flatMap((c) => [
      c.upstream.responseTimeoutMs,
      c.upstream.requestTimeoutMs,
      c.upstream.firstByteTimeoutMs,
      c.upstream.streamIdleTimeoutMs,
    ]),
  )
  const bodyLimitBytes = Math.max(...configs.map((c) => c.server.bodyLimitBytes))
  const keepAliveTimeoutMs = Math.min(...configs.map((c) => c.server.keepAliveTimeoutMs))

  const chains = proxyingChains(top)
  t.ok(chains.length > 0, 'some location proxies')
  for (const chain of chains) {
    const where = `the location with proxy_pass ${effective(chain, 'proxy_pass')[0]?.args[0]}`
    const passTo = /^http:\/\/([^/:]+)/.exec(effective(chain, 'proxy_pass')[0]?.args[0] ?? '')?.[1]
    const upstream = upstreams.find((u) => u.args[0] === passTo)
    t.ok(upstream, `${where}: passes to an upstream block defined in the conf`)
    const one = (name: string) => effective(chain, name)[0]?.args
    t.equal(one('proxy_http_version')?.[0], '1.1', `${where}: proxy_http_version 1.1 (keep-alive to the gateways)`)
    const headers = effective(chain, 'proxy_set_header').map((d) => [d.args[0]?.toLowerCase(), d.args[1]] as const)
    t.ok(
      headers.some(([name, value]) => name === 'connection' && value === ''),
      `${where}: proxy_set_header Connection "" (else nginx sends Connection: close and keep-alive is lost)`,
    )
    for (const [name, value] of headers) {
      if (name === 'authorization')
        t.equal(value, '$http_authorization', `${where}: Authorization (the gateway key) is passed on unchanged`)
    }
    t.not(one('proxy_pass_request_headers')?.[0], 'off', `${where}: request headers (Authorization) are passed on`)
    t.equal(one('proxy_buffering')?.[0], 'off', `${where}: proxy_buffering off, so SSE chunks are passed on as they come`)
    t.not(one('gzip')?.[0], 'on', `${where}: no gzip (it would hold SSE chunks back)`)
    const readMs = nginxTimeMs(one('proxy_read_timeout')?.[0], '60s')
    t.ok(
      readMs > longestWait,
      `${where}: proxy_read_timeout (${readMs} ms) exceeds the gateways' longest wait between two reads (${longestWait} ms)`,
    )
    const bodyBytes = nginxBytes(one('client_max_body_size')?.[0], '1m')
    t.ok(
      bodyBytes > bodyLimitBytes,
      `${where}: client_max_body_size (${bodyBytes} bytes) exceeds server.bodyLimitBytes (${bodyLimitBytes}), so the gateway's own 413 is what clients see`,
    )
  }

  for (const upstream of upstreams) {
    const block = upstream.block ?? []
    const name = `upstream ${upstream.args[0]}`
    t.equal(named(block, 'keepalive').length, 1, `${name}: keepalive keeps idle connections to the gateways`)
    const idleMs = nginxTimeMs(named(block, 'keepalive_timeout')[0]?.args[0], '60s')
    t.ok(
      idleMs < keepAliveTimeoutMs,
      `${name}: keepalive_timeout (${idleMs} ms) is below the gateways' server.keepAliveTimeoutMs (${keepAliveTimeoutMs}), so nginx closes an idle connection first`,
    )
    if (named(block, 'server').some((server) => server.args.includes('resolve'))) {
      t.equal(named(block, 'zone').length, 1, `${name}: "server … resolve" needs a zone`)
      t.ok(named(block, 'resolver').length + named(http, 'resolver').length > 0, `${name}: "server … resolve" needs a resolver`)
      const version = imageVersion(String(service('nginx').image))
      t.ok(
        version !== undefined && atLeast(version, [1, 27, 3]),
        `${name}: "server … resolve" needs nginx 1.27.3 or later (image ${service('nginx').image})`,
      )
    }
  }

  const listens = named(http, 'server').flatMap((server) =>
    named(server.block ?? [], 'listen').map((l) => Number(/(\d+)$/.exec(l.args[0] ?? '')?.[1] ?? 80)),
  )
  for (const port of portsOf(service('nginx'))) {
    t.ok(listens.includes(port.target), `nginx publishes container port ${port.target}, which its conf listens on (${listens.join(', ')})`)
  }
  const shutdown = named(top, 'worker_shutdown_timeout')[0]?.args[0]
  const grace = durationMs(service('nginx').stop_grace_period) ?? 10_000
  if (shutdown !== undefined)
    t.ok(nginxTimeMs(shutdown, '0s') < grace, `nginx: worker_shutdown_timeout (${shutdown}) fits in its stop_grace_period`)
})

t.test('only nginx publishes ports, and nothing uses the host network', async (t) => {
  for (const name of serviceNames) {
    const ports = portsOf(service(name))
    if (name === 'nginx') t.ok(ports.length > 0, 'nginx publishes a port to the host')
    else t.equal(ports.length, 0, `${name} publishes no port (only nginx is reachable from the host)`)
    t.not(service(name).network_mode, 'host', `${name} does not use network_mode: host`)
  }
})

t.test('depends_on: existing services, healthy where it matters', async (t) => {
  const hasHealthcheck = (name: string) => {
    const healthcheck = service(name).healthcheck
    if (isMap(healthcheck)) return healthcheck.disable !== true && healthcheck.test !== undefined
    // No healthcheck in the file: a service built from the Dockerfile inherits its HEALTHCHECK.
    return (
      buildContextOf(service(name)) !== undefined &&
      dockerfile.healthcheck !== undefined &&
      !/^HEALTHCHECK\s+NONE$/i.test(dockerfile.healthcheck)
    )
  }
  t.match(dockerfile.healthcheck ?? '', /\/healthz/, "the Dockerfile's HEALTHCHECK fetches /healthz")
  for (const name of serviceNames) {
    for (const [dependency, condition] of dependsOnOf(service(name))) {
      t.ok(serviceNames.includes(dependency), `${name} depends on ${dependency}, a service of the file`)
      t.ok(
        ['service_started', 'service_healthy', 'service_completed_successfully'].includes(condition),
        `${name} → ${dependency}: condition ${condition}`,
      )
      if (condition === 'service_healthy')
        t.ok(hasHealthcheck(dependency), `${name} waits for ${dependency} to be healthy, and it has a healthcheck`)
    }
  }
  const nginx = dependsOnOf(service('nginx'))
  for (const gateway of GATEWAYS) {
    t.equal(nginx.get(gateway), 'service_healthy', `nginx starts once ${gateway} is healthy`)
    t.equal(
      dependsOnOf(service(gateway)).get('postgres'),
      'service_healthy',
      `${gateway} waits for postgres (it opens the store at startup)`,
    )
  }
})

t.test("each gateway's stop_grace_period leaves room for its drain", async (t) => {
  t.equal(schemaDefault('server', 'drainTimeoutMs'), 30000, 'the schema default for server.drainTimeoutMs (when the file has none)')
  for (const name of GATEWAYS) {
    const drainMs = gatewayConfig(name).server.drainTimeoutMs
    const grace = service(name).stop_grace_period
    const graceMs = durationMs(grace)
    t.ok(
      graceMs !== undefined && graceMs > drainMs,
      `${name}: stop_grace_period (${String(grace ?? "absent: Docker's 10s")}) exceeds server.drainTimeoutMs (${drainMs} ms)`,
    )
  }
})

t.test("the header's commands name this file and services, and its keys create works", async (t) => {
  const fileFlags = headerLines.flatMap((line) => [...line.matchAll(/docker compose -f (\S+)/g)].map((m) => m[1]))
  t.ok(fileFlags.length >= 2, 'the header shows the up and exec commands')
  for (const flag of fileFlags) t.equal(flag, COMPOSE_FILE, `the header's docker compose -f names ${COMPOSE_FILE}`)
  t.ok(
    headerLines.some((line) => line.includes(`docker compose -f ${COMPOSE_FILE} up --build`)),
    'the header shows how to start it (up --build)',
  )

  const cmd = /^CMD\s+(\[.*\])$/i.exec(dockerfile.cmd ?? '')?.[1]
  const cmdArgv = cmd === undefined ? [] : (JSON.parse(cmd) as string[])
  const entry = cmdArgv.join(' ')
  const create = headerLines
    .map((line) => new RegExp(`exec (\\S+) (${entry.replaceAll('.', '\\.')}) (keys create .*)$`).exec(line))
    .find((m) => m !== null)
  t.ok(create, `the header shows keys create through the image's entry point (${entry})`)
  if (create === undefined || create === null) return
  const [, gateway = '', , args = ''] = create
  t.ok((GATEWAYS as readonly string[]).includes(gateway), `the header's exec runs in a gateway (${gateway})`)

  // The same command through the real CLI, with the gateway's environment (so the same
  // TOPROUTER_PROXY_CONFIG, resolved to the mounted host file), on a temp SQLite store instead of
  // PostgreSQL and without Redis.
  const dir = mkdtempSync(join(tmpdir(), 'toprouter-compose-team-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const env = containerEnv(gateway)
  const configFile = hostFileFor(gateway, env.TOPROUTER_PROXY_CONFIG ?? '')
  let stdout = ''
  let stderr = ''
  const status = await runTeamCli(splitShellWords(args), {
    stdout: (text) => (stdout += text),
    stderr: (text) => (stderr += text),
    env: {
      ...env,
      TOPROUTER_PROXY_CONFIG: configFile,
      TOPROUTER_PROXY_STORE_URL: `sqlite:${join(dir, 'team.db')}`,
      TOPROUTER_PROXY_REDIS_URL: '',
    },
    cwd: dir,
  })
  t.equal(status, 0, `the header's "${args}" succeeds (${stderr.trim()})`)
  t.match(stdout, /secret: +tpk_/, 'and prints the new secret')
})

// Optional: only where an nginx binary happens to be installed (none is in CI; none is installed for this).
const hasNginx = spawnSync('nginx', ['-v']).error === undefined
t.test(
  'nginx -t accepts the conf',
  { skip: hasNginx ? false : 'no nginx binary here: the conf is checked by the parser above only' },
  async (t) => {
    const { file, target } = nginxConf()
    t.equal(target, '/etc/nginx/nginx.conf', 'a whole nginx.conf (conf.d files cannot be tested alone)')
    const dir = mkdtempSync(join(tmpdir(), 'toprouter-compose-nginx-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    // The gateways' names resolve only on the compose network; nginx -t resolves upstream servers.
    let text = readFileSync(file, 'utf8')
    for (const gateway of GATEWAYS) text = text.replaceAll(`${gateway}:`, '127.0.0.1:')
    writeFileSync(join(dir, basename(file)), text)
    const result = spawnSync('nginx', ['-t', '-p', dir, '-e', 'stderr', '-c', join(dir, basename(file))], { encoding: 'utf8' })
    t.equal(result.status, 0, `nginx -t: ${result.stderr.trim()}`)
  },
)

/** Shell-like words (single and double quotes), for the header's command line. */
function splitShellWords(line: string): string[] {
  return [...line.matchAll(/'([^']*)'|"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2] ?? m[3] ?? '')
}
