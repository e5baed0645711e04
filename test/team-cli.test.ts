import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { runTeamCli } from '../src/team/cli.js'
import { openTeamService } from '../src/team/team-service.js'

/** The real CLI (`keys …`, `usage …`) in a child process, on a temp SQLite store, without TOPROUTER_API_KEY. */

// About twenty spawns of the real CLI, each a second of tsx start-up: more than the default 60 s on a busy 2-core machine.
t.setTimeout(180_000)

interface CliResult {
  readonly status: number | null
  readonly stdout: string
  readonly stderr: string
}

// The CLI runs in the temp dir (relative sqlite: paths resolve there), so tsx and main.ts are named absolutely.
const TSX_LOADER = import.meta.resolve('tsx')
const MAIN = fileURLToPath(new URL('../src/main.ts', import.meta.url))

function cliIn(dir: string) {
  return (args: string[]): Promise<CliResult> =>
    new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['--import', TSX_LOADER, MAIN, ...args], {
        cwd: dir,
        env: { PATH: process.env.PATH ?? '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      let stdout = ''
      let stderr = ''
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
      child.on('error', reject)
      child.on('close', (status) => resolve({ status, stdout, stderr }))
    })
}

function setUp(t: Test) {
  const dir = mkdtempSync(join(tmpdir(), 'toprouter-team-cli-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  // A relative path: the store lands in the working directory the CLI runs in.
  writeFileSync(join(dir, 'config.yaml'), 'team:\n  enabled: true\n  storeUrl: sqlite:data/team.db\n')
  return { dir, cli: cliIn(dir), storeUrl: `sqlite:${join(dir, 'data', 'team.db')}` }
}

const json = (result: CliResult) => JSON.parse(result.stdout) as Record<string, unknown>

t.test('round trip: create → list → show → update → revoke → usage, tables and --json', async (t) => {
  const { cli, storeUrl } = setUp(t)
  const config = ['--config', 'config.yaml']

  const created = await cli([
    'keys',
    'create',
    '--name',
    'alice',
    '--rpm',
    '5',
    '--tpm',
    '1000',
    '--max-concurrent',
    '2',
    '--budget-tokens',
    '100',
    '--budget-usd',
    '2.5',
    '--budget-period',
    'month',
    '--models',
    'google/*, anthropic/*',
    '--expires',
    '30d',
    ...config,
  ])
  t.equal(created.status, 0, created.stderr)
  const secret = /secret:\s+(tpk_\S+)/.exec(created.stdout)?.[1] ?? ''
  t.match(secret, /^tpk_[A-Za-z0-9_-]{43}$/, 'the secret is printed')
  t.match(created.stdout, /will not be shown again/)
  t.match(created.stdout, /name:\s+alice/)
  t.match(created.stdout, /models:\s+google\/\*, anthropic\/\*/)

  const createdJson = await cli(['keys', 'create', '--name', 'bob', '--json', ...config])
  t.equal(createdJson.status, 0)
  const bob = json(createdJson)
  t.match(bob, { name: 'bob', rpm: null, models: [], metadata: {}, revokedAt: null, expiresAt: null, budgetPeriod: 'total' })
  t.match(bob.key, /^tpk_/, '--json create: the record plus "key", as the admin API answers')
  t.equal(String(bob.prefix), String(bob.key).slice(0, 12))
  const bobSecret = String(bob.key)

  // Read-only commands run side by side: each spawn costs a second of tsx start-up.
  const [list, listJsonResult, aliceShown] = await Promise.all([
    cli(['keys', 'list', ...config]),
    cli(['keys', 'list', '--json', ...config]),
    cli(['keys', 'show', 'alice', '--json', ...config]),
  ])
  t.equal(list.status, 0)
  const [header, ...rows] = list.stdout.trimEnd().split('\n')
  t.match(header, /^NAME\s+ID\s+PREFIX\s+STATUS\s+RPM\s+TPM\s+CONCURRENT\s+BUDGET\s+MODELS\s+EXPIRES$/)
  t.equal(rows.length, 2)
  t.match(
    rows[0],
    /^alice\s+key_\S+\s+tpk_\S+\s+active\s+5\s+1000\s+2\s+100 tokens and \$2\.5 per month\s+google\/\*,anthropic\/\*\s+20\d\d-/,
  )
  t.equal(header?.indexOf('ID'), rows[1]?.indexOf('key_'), 'columns are aligned')
  const listJson = json(listJsonResult)
  t.same(
    (listJson.data as Array<{ name: string }>).map((key) => key.name),
    ['alice', 'bob'],
  )

  const aliceJson = json(aliceShown)
  t.match(aliceJson, { name: 'alice', rpm: 5, tpm: 1000, maxConcurrent: 2, budgetTokens: 100, budgetUsd: 2.5, budgetPeriod: 'month' })
  const shownById = await cli(['keys', 'show', String(aliceJson.id), ...config])
  t.match(shownById.stdout, /^id:\s+key_/)
  t.match(shownById.stdout, /status:\s+active/)

  const updated = json(
    await cli(['keys', 'update', 'alice', '--rpm', '60', '--models', 'openai/*', '--expires', 'never', '--json', ...config]),
  )
  t.match(updated, { rpm: 60, tpm: 1000, models: ['openai/*'], expiresAt: null })

  const revoked = await cli(['keys', 'revoke', 'bob', ...config])
  t.equal(revoked.status, 0)
  t.match(revoked.stdout, /status:\s+revoked/)

  const team = await openTeamService(storeUrl)
  const time = new Date()
  const base = {
    requestId: 'r',
    modelRequested: 'openai/gpt-5',
    stream: false,
    ending: 'complete' as const,
    attempts: 1,
    latencyMs: 5,
    ttftMs: null,
  }
  await team.usage.recordUsage([
    {
      ...base,
      time,
      keyId: String(aliceJson.id),
      modelServed: 'openai/gpt-5',
      status: 200,
      promptTokens: 10,
      completionTokens: 50,
      totalTokens: 60,
      costUsd: 0.5,
    },
    {
      ...base,
      time,
      keyId: String(bob.id),
      modelServed: null,
      status: 401,
      promptTokens: null,
      completionTokens: null,
      totalTokens: null,
      costUsd: null,
    },
  ])
  await team.close()

  const [usage, usageJson, byModel, byDay, beforeAll, bobShown] = await Promise.all([
    cli(['usage', ...config]),
    cli(['usage', '--json', ...config]),
    cli(['usage', '--key', 'alice', '--since', '7d', '--by', 'model', '--json', ...config]),
    cli(['usage', '--by', 'day', '--json', ...config]),
    cli(['usage', '--until', '2020-01-01', '--json', ...config]),
    cli(['keys', 'show', 'bob', '--json', ...config]),
  ])
  t.match(json(bobShown).revokedAt, /^20\d\d-/, 'the revocation is stored')
  t.equal(usage.status, 0, usage.stderr)
  t.match(usage.stdout, /^KEY\s+REQUESTS\s+ERRORS\s+PROMPT\s+COMPLETION\s+TOTAL\s+COST_USD\n/)
  t.match(usage.stdout, /alice\s+1\s+0\s+10\s+50\s+60\s+0\.500000/)
  t.match(usage.stdout, /bob\s+1\s+1\s+0\s+0\s+0\s+unknown/)
  t.same((json(usageJson).data as unknown[]).length, 2)
  t.same(json(byModel), {
    data: [{ group: 'openai/gpt-5', requests: 1, errors: 0, promptTokens: 10, completionTokens: 50, totalTokens: 60, costUsd: 0.5 }],
  })
  const day = time.toISOString().slice(0, 10)
  t.same(
    (json(byDay).data as Array<{ group: string }>).map((row) => row.group),
    [day],
  )
  t.same(json(beforeAll), { data: [] })

  t.test("the secrets appear only in create's output", async (t) => {
    const others = [list, listJsonResult, aliceShown, shownById, revoked, usage, usageJson, byModel, bobShown]
    for (const result of others) {
      t.notOk(result.stdout.includes(secret) || result.stderr.includes(secret), "alice's secret not shown")
      t.notOk(result.stdout.includes(bobSecret) || result.stderr.includes(bobSecret), "bob's secret not shown")
    }
    t.ok(created.stdout.includes(secret) && createdJson.stdout.includes(bobSecret), 'non-vacuous: create did show them')
  })
})

async function runInProcess(dir: string, args: string[]): Promise<CliResult> {
  let stdout = ''
  let stderr = ''
  const status = await runTeamCli(args, {
    stdout: (text) => (stdout += text),
    stderr: (text) => (stderr += text),
    env: {},
    cwd: dir,
  })
  return { status, stdout, stderr }
}

t.test('bad flags and values: one line on stderr and exit 2; no such key: exit 1', async (t) => {
  const { cli, dir } = setUp(t)
  const config = ['--config', 'config.yaml']
  t.equal((await cli(['keys', 'create', '--name', 'taken', ...config])).status, 0)
  const cases: Array<[string[], RegExp, number]> = [
    [['keys', 'create', '--rpm', '5'], /--name is required/, 2],
    [['keys', 'create', '--name', 'x', '--rpm', 'five'], /--rpm must be a whole number >= 0 \(0 = unlimited\), found "five"/, 2],
    [['keys', 'create', '--name', 'x', '--rpm=-1'], /--rpm must be a whole number/, 2],
    [['keys', 'create', '--name', 'x', '--budget-usd', '-2'], /Option '--budget-usd' argument is ambiguous|--budget-usd must be/, 2],
    [['keys', 'create', '--name', 'x', '--budget-period', 'year'], /budgetPeriod must be one of day, week, month, total/, 2],
    [['keys', 'create', '--name', 'x', '--expires', 'tomorrow'], /--expires must be a span such as 30d/, 2],
    [['keys', 'create', '--name', 'x', '--colour', 'red'], /Unknown option '--colour'/, 2],
    [['keys', 'create', '--name', 'taken'], /a key named "taken" already exists/, 2],
    [['keys', 'show'], /expected one NAME or ID/, 2],
    [['keys', 'update', 'taken'], /needs at least one field flag/, 2],
    [['keys', 'frob'], /unknown keys subcommand "frob"/, 2],
    [['keys'], /keys needs a subcommand/, 2],
    [['usage', '--by', 'hour'], /--by must be one of key, model, day, found "hour"/, 2],
    [['usage', '--since', 'last week'], /--since must be a span/, 2],
    [['keys', 'show', 'nobody'], /no key with the name "nobody"/, 1],
    [['usage', '--key', 'nobody'], /no key with the name "nobody"/, 1],
  ]
  // Each case through runTeamCli in-process (a spawn per case would cost a second each); the first
  // three also through the real process, for main.ts's exit code and stderr.
  for (const [index, [args, message, status]] of cases.entries()) {
    const result = index < 3 ? await cli([...args, ...config]) : await runInProcess(dir, [...args, ...config])
    t.equal(result.status, status, args.join(' '))
    t.match(result.stderr, message, args.join(' '))
    t.equal(result.stderr.trimEnd().split('\n').length, 1, 'one line')
    t.equal(result.stdout, '', 'nothing on stdout')
  }
  const badConfig = await cli(['keys', 'list', '--config', 'missing.yaml'])
  t.equal(badConfig.status, 2)
  t.match(badConfig.stderr, /cannot read config file missing\.yaml/)
})

t.test('--help lists the team subcommands', async (t) => {
  const { cli } = setUp(t)
  const help = await cli(['--help'])
  t.equal(help.status, 0)
  t.match(help.stdout, /toprouter-proxy keys create --name NAME/)
  t.match(help.stdout, /toprouter-proxy usage \[--key NAME\|ID\]/)
})
