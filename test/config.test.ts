import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import t from 'tap'
import { parse } from 'yaml'
import { CONFIG_SCHEMA, ConfigError, loadConfig } from '../src/config.js'

const exampleText = readFileSync(new URL('../config.example.yaml', import.meta.url), 'utf8')
const fromYaml = (yaml: string, env: Record<string, string> = {}, flags = {}) =>
  loadConfig({ configPath: 'cfg.yaml', readFile: () => yaml, env, flags })

t.test('config.example.yaml documents every key, each with its default', async (t) => {
  const example = parse(exampleText) as Record<string, Record<string, unknown>>
  const defaults = loadConfig({})
  const schemaSections = CONFIG_SCHEMA.properties as Record<string, { properties?: Record<string, unknown> }>
  t.same(Object.keys(example).sort(), Object.keys(schemaSections).sort(), 'same sections as the schema')
  for (const [section, schema] of Object.entries(schemaSections)) {
    if (schema.properties === undefined) continue
    t.same(Object.keys(example[section] ?? {}).sort(), Object.keys(schema.properties).sort(), `${section}: same keys as the schema`)
    for (const [key, value] of Object.entries(example[section] ?? {})) {
      t.same(value, (defaults as unknown as Record<string, Record<string, unknown>>)[section]?.[key], `${section}.${key} shows its default`)
    }
  }
  t.same(fromYaml(exampleText), defaults, 'loading the example changes nothing')
})

t.test('defaults are the spec values, and the result is frozen', async (t) => {
  const config = loadConfig({})
  t.same(config.listen, { host: '127.0.0.1', port: 8787 })
  t.equal(config.upstream.baseUrl, 'https://toprouter.cc')
  t.equal(config.retry.maxAttempts, 3)
  t.equal(config.server.bodyLimitBytes, 10 * 1024 * 1024)
  t.equal(config.apiKey, undefined)
  t.ok(Object.isFrozen(config) && Object.isFrozen(config.retry) && Object.isFrozen(config.fallbacks))
  t.throws(() => {
    ;(config.retry as { maxAttempts: number }).maxAttempts = 9
  }, TypeError)
})

t.test('precedence: defaults < file < environment < flags', async (t) => {
  const yaml = 'listen: { host: 10.0.0.1, port: 9000 }\nupstream: { baseUrl: "http://file.example/" }\nlog: { level: warn }\n'
  const fileOnly = fromYaml(yaml)
  t.equal(fileOnly.listen.port, 9000)
  t.equal(fileOnly.upstream.baseUrl, 'http://file.example', 'a trailing slash is trimmed')
  t.equal(fileOnly.log.level, 'warn')
  const withEnv = fromYaml(yaml, {
    PORT: '9100',
    HOST: '0.0.0.0',
    TOPROUTER_BASE_URL: 'http://env.example',
    LOG_LEVEL: 'DEBUG',
    TOPROUTER_API_KEY: 'sk-env',
  })
  t.same(withEnv.listen, { host: '0.0.0.0', port: 9100 })
  t.equal(withEnv.upstream.baseUrl, 'http://env.example')
  t.equal(withEnv.log.level, 'debug')
  t.equal(withEnv.apiKey, 'sk-env')
  const fleet = fromYaml('team: { storeUrl: "sqlite:file.db", redisUrl: "redis://file:6379" }', {
    TOPROUTER_PROXY_STORE_URL: 'postgres://gw@db:5432/gw',
    TOPROUTER_PROXY_REDIS_URL: 'redis://cache:6379',
  })
  t.equal(fleet.team.storeUrl, 'postgres://gw@db:5432/gw', 'TOPROUTER_PROXY_STORE_URL over the file')
  t.equal(fleet.team.redisUrl, 'redis://cache:6379', 'TOPROUTER_PROXY_REDIS_URL over the file')
  const withFlags = fromYaml(yaml, { PORT: '9100' }, { port: '9200', host: '::1', upstream: 'https://flag.example/prefix' })
  t.same(withFlags.listen, { host: '::1', port: 9200 })
  t.equal(withFlags.upstream.baseUrl, 'https://flag.example/prefix')
  t.equal(fromYaml('').listen.port, 8787, 'an empty file is all defaults')
  const viaEnvPath = loadConfig({
    env: { TOPROUTER_PROXY_CONFIG: 'x.yaml' },
    readFile: (p) => (p === 'x.yaml' ? 'listen: { port: 1234 }' : ''),
  })
  t.equal(viaEnvPath.listen.port, 1234, 'TOPROUTER_PROXY_CONFIG names the file')
})

const badConfigs: Array<{ name: string; load: () => unknown; message: RegExp }> = [
  {
    name: 'a non-numeric PORT',
    load: () => fromYaml('', { PORT: 'eighty' }),
    message: /listen\.port must be a whole number, found "eighty" \(from environment variable PORT\)/,
  },
  {
    name: 'a port out of range from a flag',
    load: () => fromYaml('', {}, { port: '70000' }),
    message: /listen\.port must be a number <= 65535, found 70000 \(from flag --port\)/,
  },
  {
    name: 'a negative timeout in the file',
    load: () => fromYaml('upstream: { connectTimeoutMs: -5 }'),
    message: /upstream\.connectTimeoutMs must be a number >= 1, found -5 \(in cfg\.yaml\)/,
  },
  {
    name: 'a fractional attempt count',
    load: () => fromYaml('retry: { maxAttempts: 2.5 }'),
    message: /retry\.maxAttempts must be a whole number, found 2\.5/,
  },
  {
    name: 'a string where a number goes',
    load: () => fromYaml('breaker: { resetTimeoutMs: "30s" }'),
    message: /breaker\.resetTimeoutMs must be a whole number, found "30s"/,
  },
  {
    name: 'a non-http base URL',
    load: () => fromYaml('', { TOPROUTER_BASE_URL: 'ftp://x' }),
    message: /upstream\.baseUrl must be an http:\/\/ or https:\/\/ URL.*found "ftp:\/\/x"/,
  },
  {
    name: 'an unknown log level',
    load: () => fromYaml('log: { level: loud }'),
    message: /log\.level must be one of fatal, error, warn, info, debug, trace, silent, found "loud"/,
  },
  {
    name: 'a misspelt key',
    load: () => fromYaml('retry: { maxAttempt: 3 }'),
    message: /unknown key "retry\.maxAttempt" \(known keys here: maxAttempts/,
  },
  { name: 'an unknown section', load: () => fromYaml('retries: {}'), message: /unknown key "retries"/ },
  {
    name: 'a fallback list that is not a list',
    load: () => fromYaml('fallbacks: { "a/b": "c/d" }'),
    message: /fallbacks\.a~1b must be a array|fallbacks.*must be/,
  },
  {
    name: 'a model falling back to itself',
    load: () => fromYaml('fallbacks: { "a/b": ["a/b"] }'),
    message: /must not list the model itself/,
  },
  { name: 'a secret in the file', load: () => fromYaml('upstream: { apiKey: sk-oops }'), message: /secrets come from the environment/ },
  { name: 'YAML that is a list', load: () => fromYaml('- a\n- b'), message: /must hold a YAML mapping/ },
  { name: 'broken YAML', load: () => fromYaml('listen: { port: [1, }'), message: /is not valid YAML/ },
  {
    name: 'a missing file',
    load: () => loadConfig({ configPath: '/nonexistent/config.yaml' }),
    message: /cannot read config file \/nonexistent\/config\.yaml/,
  },
  {
    name: 'an unparseable team.storeUrl',
    load: () => fromYaml('team: { storeUrl: "mysql://db/x" }'),
    message: /team\.storeUrl must be sqlite:<path> or postgres:\/\/user@host:5432\/db, found "mysql:\/\/db\/x" \(in cfg\.yaml\)/,
  },
  { name: 'a sqlite: storeUrl without a path', load: () => fromYaml('team: { storeUrl: "sqlite:" }'), message: /team\.storeUrl must be/ },
  {
    name: 'a negative team limit',
    load: () => fromYaml('team: { defaults: { rpm: -1 } }'),
    message: /team\.defaults\.rpm must be a number >= 0, found -1/,
  },
  {
    name: 'a negative price',
    load: () => fromYaml('team: { prices: { "a/b": { inputPerMTok: -1, outputPerMTok: 1 } } }'),
    message: /team\.prices\.a\/b\.inputPerMTok must be a number >= 0, found -1/,
  },
  {
    name: 'a misspelt team default',
    load: () => fromYaml('team: { defaults: { rpn: 1 } }'),
    message: /unknown key "team\.defaults\.rpn" \(known keys here: rpm, tpm, maxConcurrent\)/,
  },
  {
    name: 'a team.storePoolSize of 0',
    load: () => fromYaml('team: { storePoolSize: 0 }'),
    message: /team\.storePoolSize/,
  },
  {
    name: 'a fractional team.storePoolSize',
    load: () => fromYaml('team: { storePoolSize: 2.5 }'),
    message: /team\.storePoolSize/,
  },
  {
    name: 'an unknown redisFailure',
    load: () => fromYaml('team: { redisFailure: maybe }'),
    message: /team\.redisFailure must be one of open, closed, found "maybe"/,
  },
  {
    name: 'team.enabled without TOPROUTER_API_KEY',
    load: () => fromYaml('team: { enabled: true }'),
    message: /team\.enabled is true \(in cfg\.yaml\) but TOPROUTER_API_KEY is not set/,
  },
  {
    name: 'an admin key that is too short',
    load: () => fromYaml('team: { enabled: true }', { TOPROUTER_API_KEY: 'sk-team', TOPROUTER_PROXY_ADMIN_KEY: 'sk-oops-short' }),
    message: /TOPROUTER_PROXY_ADMIN_KEY must be at least 16 printable ASCII characters/,
  },
  {
    name: 'an admin key without team mode',
    load: () => fromYaml('', { TOPROUTER_PROXY_ADMIN_KEY: 'sk-oops-0123456789abcdef' }),
    message: /TOPROUTER_PROXY_ADMIN_KEY is set but team\.enabled is false/,
  },
  {
    name: 'a key with a space',
    load: () => fromYaml('', { TOPROUTER_API_KEY: 'sk-a b' }),
    message: /TOPROUTER_API_KEY must be printable ASCII/,
  },
]

for (const c of badConfigs) {
  t.test(`bad config: ${c.name}`, async (t) => {
    t.throws(c.load, { name: 'ConfigError', message: c.message })
    try {
      c.load()
    } catch (err: unknown) {
      t.ok(err instanceof ConfigError)
      t.notMatch((err as Error).message, /sk-oops/, 'the message never echoes a secret')
    }
  })
}

t.test('team: defaults, and the upstream key required only when serving', async (t) => {
  const defaults = loadConfig({}).team
  t.same(defaults, {
    enabled: false,
    storeUrl: 'sqlite:toprouter-proxy.db',
    storePoolSize: 10,
    redisUrl: '',
    redisKeyPrefix: 'toprouter:',
    keyCacheTtlMs: 5000,
    usageFlushMs: 1000,
    maxQueueWaitMs: 0,
    redisFailure: 'open',
    defaults: { rpm: 0, tpm: 0, maxConcurrent: 0 },
    prices: {},
  })
  const yaml = 'team: { enabled: true, storeUrl: "postgres://u@db:5432/gw", prices: { "a/b": { inputPerMTok: 0.3, outputPerMTok: 2.5 } } }'
  const served = fromYaml(yaml, { TOPROUTER_API_KEY: 'sk-team' })
  t.equal(served.team.enabled, true)
  t.same(served.team.prices, { 'a/b': { inputPerMTok: 0.3, outputPerMTok: 2.5 } })
  const forCli = loadConfig({ configPath: 'cfg.yaml', readFile: () => yaml, env: {}, forServing: false })
  t.equal(forCli.team.enabled, true, 'the CLI loads a team config without the upstream key')
  t.equal(forCli.apiKey, undefined)
  t.equal(fromYaml('team: { storeUrl: "sqlite:/var/lib/gw.db" }').team.storeUrl, 'sqlite:/var/lib/gw.db')
  t.equal(fromYaml('team: { storeUrl: "postgresql://db/gw" }').team.storeUrl, 'postgresql://db/gw')
  t.equal(fromYaml('team: { storePoolSize: 3 }').team.storePoolSize, 3)
})

const cli = (args: string[], env: Record<string, string> = {}) =>
  spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], {
    cwd: new URL('..', import.meta.url),
    env: { PATH: process.env.PATH ?? '', ...env },
    encoding: 'utf8',
    timeout: 20000,
  })

t.test('CLI: a bad config exits 2 with a message naming key, expectation and value', async (t) => {
  const result = cli(['--port', 'abc'])
  t.equal(result.status, 2)
  t.match(result.stderr, /listen\.port must be a whole number, found "abc" \(from flag --port\)/)
  const unknownFlag = cli(['--prot', '1'])
  t.equal(unknownFlag.status, 2)
  t.match(unknownFlag.stderr, /Unknown option '--prot'/)
})

t.test('CLI: --help, --version and --check-config', async (t) => {
  const help = cli(['--help'])
  t.equal(help.status, 0)
  t.match(help.stdout, /Usage: toprouter-proxy/)
  t.match(help.stdout, /--check-config/)
  const version = cli(['--version'])
  t.equal(version.status, 0)
  t.equal(
    version.stdout.trim(),
    (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version,
  )
  const check = cli(['--check-config', '--upstream', 'http://127.0.0.1:1'], { TOPROUTER_API_KEY: 'sk-check-canary-123456' })
  t.equal(check.status, 0)
  t.match(check.stdout, /config ok/)
  t.match(check.stdout, /"baseUrl": "http:\/\/127\.0\.0\.1:1"/)
  t.notMatch(check.stdout + check.stderr, /sk-check-canary/, 'the key is not printed')
  t.match(check.stdout, /set \(from TOPROUTER_API_KEY\)/)
  const urls = cli(['--check-config'], {
    TOPROUTER_PROXY_STORE_URL: 'postgres://gateway:pg-canary-secret@db:5432/gateway',
    TOPROUTER_PROXY_REDIS_URL: 'redis://:redis-canary-secret@cache:6379',
  })
  t.equal(urls.status, 0, urls.stderr)
  t.match(
    urls.stdout,
    /"storeUrl": "postgres:\/\/gateway:\*\*\*@db:5432\/gateway"/,
    'the store URL from the environment, its password hidden',
  )
  t.match(urls.stdout, /"redisUrl": "redis:\/\/:\*\*\*@cache:6379"/, 'the Redis URL too')
  t.notMatch(urls.stdout + urls.stderr, /canary-secret/)
})
