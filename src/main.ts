#!/usr/bin/env node
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { type Config, ConfigError, loadConfig } from './config.js'
import { buildLogger, drainLogs } from './logging.js'
import { drain } from './shutdown.js'
import { TEAM_CLI_HELP } from './team/cli-help.js'
import { shownUrl } from './team/store/store-url.js'
import type { TeamMode } from './team/team-mode.js'
import { type RequestTracer, tracingRequested } from './tracing/request-tracer.js'

/** The CLI: flags → config → app → listen, and a graceful drain on SIGTERM/SIGINT. */

const EXIT_BAD_CONFIG = 2

const HELP = `toprouter-proxy — a dependable local proxy in front of TopRouter (https://toprouter.cc)

Usage: toprouter-proxy [options]
       toprouter-proxy keys|usage … (below)
       toprouter-proxy demo   faults injected by a fake TopRouter, seen without and with the proxy (demo --help)

Options:
  --config <path>    YAML config file (also TOPROUTER_PROXY_CONFIG); see config.example.yaml
  --host <host>      listen host (default 127.0.0.1; also HOST)
  --port <port>      listen port (default 8787; also PORT)
  --upstream <url>   upstream base URL (default https://toprouter.cc; also TOPROUTER_BASE_URL)
  --check-config     validate the configuration, print it (without secrets) and exit
  --help             show this help
  --version          print the version

${TEAM_CLI_HELP}
Environment: TOPROUTER_API_KEY (the upstream key; replaces the client's Authorization),
TOPROUTER_PROXY_ADMIN_KEY (team mode: enables /admin/keys and /admin/usage),
TOPROUTER_BASE_URL, HOST, PORT, LOG_LEVEL, TOPROUTER_PROXY_CONFIG;
OTEL_EXPORTER_OTLP_ENDPOINT (and the other OTEL_* variables): OpenTelemetry traces over OTLP/HTTP.
Precedence: defaults < config file < environment < flags. SIGHUP reloads the config file (README: Hot reload).
Point your OpenAI SDK at the printed base_url, e.g. new OpenAI({ baseURL: 'http://127.0.0.1:8787' }).
`

function readVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  return pkg.version
}

function parseFlags(argv: string[]) {
  try {
    return parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: 'string' },
        host: { type: 'string' },
        port: { type: 'string' },
        upstream: { type: 'string' },
        'check-config': { type: 'boolean' },
        help: { type: 'boolean' },
        version: { type: 'boolean' },
      },
    }).values
  } catch (err: unknown) {
    process.stderr.write(`toprouter-proxy: ${(err as Error).message}\nRun toprouter-proxy --help for usage.\n`)
    process.exit(EXIT_BAD_CONFIG)
  }
}

function describeConfig(config: Config): string {
  const { apiKey, adminKey, ...rest } = config
  const team = { ...rest.team, storeUrl: shownUrl(rest.team.storeUrl), redisUrl: shownUrl(rest.team.redisUrl) }
  return JSON.stringify(
    {
      ...rest,
      team,
      apiKey: apiKey === undefined ? 'not set' : 'set (from TOPROUTER_API_KEY)',
      adminKey: adminKey === undefined ? 'not set' : 'set (from TOPROUTER_PROXY_ADMIN_KEY)',
    },
    null,
    2,
  )
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2)
  if (argv[0] === 'keys' || argv[0] === 'usage') {
    // Loaded only for these subcommands: the server path never loads the store or its native binding.
    const { runTeamCli } = await import('./team/cli.js')
    process.exitCode = await runTeamCli(argv, {
      stdout: (text) => process.stdout.write(text),
      stderr: (text) => process.stderr.write(text),
      env: process.env,
      cwd: process.cwd(),
    })
    return
  }
  if (argv[0] === 'demo') {
    // Loaded only for the demo: the server path never loads the openai SDK.
    const { runDemoCli } = await import('./demo/run-demo.js')
    process.exitCode = await runDemoCli(argv.slice(1), {
      stdout: (text) => process.stdout.write(text),
      stderr: (text) => process.stderr.write(text),
    })
    return
  }
  const flags = parseFlags(argv)
  if (flags.help) {
    process.stdout.write(HELP)
    return
  }
  if (flags.version) {
    process.stdout.write(`${readVersion()}\n`)
    return
  }

  // A reload (SIGHUP, POST /admin/reload) reads the same sources again: the same file, the
  // environment the process started with (no one outside can change it), the same flags.
  const sources = {
    configPath: flags.config,
    env: process.env,
    flags: { host: flags.host, port: flags.port, upstream: flags.upstream },
  }
  let config: Config
  try {
    config = loadConfig(sources)
  } catch (err: unknown) {
    if (err instanceof ConfigError) {
      process.stderr.write(`toprouter-proxy: ${err.message}\n`)
      process.exit(EXIT_BAD_CONFIG)
    }
    throw err
  }
  if (flags['check-config']) {
    process.stdout.write(`config ok\n${describeConfig(config)}\n`)
    return
  }

  const logger = buildLogger(config.log.level)
  // SIGHUP reloads the config and never ends the process; until the app is built there is
  // nothing to reload into.
  let onSighup = () => logger.warn('SIGHUP while starting: ignored; send it again once the proxy listens')
  process.on('SIGHUP', () => onSighup())
  let team: TeamMode | undefined
  if (config.team.enabled) {
    try {
      // Loaded only in team mode: the local and sidecar modes never load the store or its native binding.
      const { openTeamMode } = await import('./team/team-mode.js')
      team = await openTeamMode(config, { log: logger })
    } catch (err: unknown) {
      logger.fatal({ err }, `cannot open the team store ${shownUrl(config.team.storeUrl)}`)
      await drainLogs(logger)
      process.exit(1)
    }
  }
  let tracer: RequestTracer | undefined
  if (tracingRequested(process.env)) {
    // Loaded only with an OTLP endpoint set: untraced, nothing of OpenTelemetry is loaded.
    const { openOtelTracer } = await import('./tracing/otel-tracer.js')
    tracer = openOtelTracer({ serviceVersion: readVersion(), log: logger })
  }
  const proxy = buildApp(config, {
    logger,
    reloadConfig: () => loadConfig(sources),
    ...(team === undefined ? {} : { team }),
    ...(tracer === undefined ? {} : { tracer }),
  })
  const { app, lifecycle } = proxy
  onSighup = () => {
    proxy.reload()
  }
  // close-with-grace would drain on SIGHUP too; SIGHUP is the reload signal here.
  closeWithGrace({ delay: null, logger: false, skip: ['SIGHUP'] }, async ({ signal, err }) => {
    if (err !== undefined) logger.error({ err }, 'fatal error, shutting down')
    const { drainTimeoutMs } = proxy.runningConfig().server
    logger.info({ signal, drainTimeoutMs }, 'draining: no new connections, waiting for in-flight requests')
    const result = await drain(app, lifecycle, drainTimeoutMs)
    logger.info(result, 'drained, exiting')
    await drainLogs(logger)
  })

  try {
    await app.listen({ host: config.listen.host, port: config.listen.port })
  } catch (err: unknown) {
    logger.fatal({ err }, `cannot listen on ${config.listen.host}:${config.listen.port}`)
    await drainLogs(logger)
    process.exit(1)
  }
  const address = app.server.address()
  const port = typeof address === 'object' && address !== null ? address.port : config.listen.port
  const allInterfaces = config.listen.host === '0.0.0.0' || config.listen.host === '::'
  const shownHost = allInterfaces ? '<this host>' : config.listen.host
  const where = allInterfaces ? ` (this machine: 127.0.0.1; a sidecar: the service name, e.g. http://proxy:${port})` : ''
  const baseUrl = `http://${shownHost.includes(':') ? `[${shownHost}]` : shownHost}:${port}`
  logger.info(
    {
      host: config.listen.host,
      port,
      upstream: config.upstream.baseUrl,
      auth: team !== undefined ? 'team gateway keys' : config.apiKey === undefined ? 'client Authorization forwarded' : 'TOPROUTER_API_KEY',
      tracing: tracer === undefined ? 'off' : 'OTLP/HTTP',
    },
    `toprouter-proxy listening on ${config.listen.host}:${port}, forwarding to ${config.upstream.baseUrl}; use base_url ${baseUrl} in your OpenAI SDK${where}`,
  )
}

await main()
