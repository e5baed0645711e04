import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import t from 'tap'

/**
 * CI does not run the full benchmark, but it runs its smoke (a couple of seconds of every phase
 * against direct, proxy, continuation, team and team-redis) so the bench cannot rot: it must start every process
 * (team-redis's own redis-server too), drive every phase, see no error or non-2xx, find one usage
 * row per request each team key made, count team-redis's Redis commands per request, and write its
 * tables, the team targets' ratios to the local proxy among them.
 */

t.test('npm run bench:smoke runs every phase end to end with no errors', { timeout: 180_000 }, async (t) => {
  const root = new URL('..', import.meta.url)
  t.ok(existsSync(new URL('dist/main.js', root)), 'dist/ is built (npm test builds it first)')
  const result = spawnSync(process.execPath, ['--import', 'tsx', 'bench/run.ts', '--smoke'], {
    cwd: root,
    encoding: 'utf8',
    timeout: 170_000,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' },
  })
  t.equal(
    result.status,
    0,
    `the smoke exits 0${result.status === 0 ? '' : `:\n${result.stdout.slice(-2000)}\n${result.stderr.slice(-2000)}`}`,
  )
  for (const phase of ['(a) non-streaming', '(b) paced', '(c) streaming', '(d) unloaded', '(e) GET /models']) {
    t.match(result.stdout, phase, `phase ${phase} ran`)
  }
  t.match(result.stdout, /No errors and no non-2xx responses in any phase/)
  // Progress: each target and each phase says, as it starts, how long the whole run has left.
  const phaseLines = result.stdout.split('\n').filter((line) => /^ {2}\[[\w() -]+\] \([a-e]\) /.test(line))
  t.equal(phaseLines.length, 5 * 5, 'five phase lines for each of the five smoke targets')
  t.ok(
    phaseLines.every((line) => / — about \d+(\.\d)? s left$| — about \d+ min( \d+ s)? left$/.test(line)),
    `every phase line ends with the time left:\n${phaseLines.slice(0, 3).join('\n')}`,
  )
  t.match(result.stdout, /^proxy: target 2 of 5 — about [\d.]+ s left$/m, 'the target line says which of how many, and the time left')
  const left = phaseLines.map((line) => Number(/about ([\d.]+) s left/.exec(line)?.[1]))
  t.ok((left[0] ?? 0) > (left.at(-1) ?? Number.POSITIVE_INFINITY), `the time left shrinks over the run (${left[0]} s → ${left.at(-1)} s)`)
  const json = JSON.parse(readFileSync(new URL('bench/results/smoke.json', root), 'utf8')) as SmokeReport
  t.ok(json, 'results/smoke.json was written')

  // The team target: the proxy in team mode, measured like `proxy` and reported as ratios to it.
  t.match(result.stdout, /\[team\] \(a\) non-streaming/, 'the team target ran its phases')
  t.match(result.stdout, /^\| team \|/m, 'team has its rows in the phase tables')
  t.match(result.stdout, /^\| \*\*team ÷ proxy\*\* \|/m, 'and its team ÷ proxy ratio rows')
  t.match(result.stdout, /## Team mode ÷ local mode/, 'the team section is in the markdown')
  t.match(
    result.stdout,
    /\| \(a\) CPU µs per non-streaming request \| [^|]+ \| [^|]+ \| [\d.]+× \| ≤ 1\.15× \|/,
    'CPU per request team/local, goal shown',
  )
  t.match(
    result.stdout,
    /\| \(d\) unloaded p50 ms, non-streaming \| [^|]+ \| [^|]+ \| [+−][\d.]+ ms \| ≤ \+0\.1 ms \|/,
    'p50 added, goal shown',
  )
  t.ok(
    json.targets.some((target) => target.label === 'team'),
    'the JSON has the team target',
  )
  const figures = json.teamVsLocal?.figures ?? []
  for (const name of ['(a) CPU µs per non-streaming request', '(c) CPU µs per 20-event stream', '(d) unloaded p50 ms, non-streaming']) {
    const figure = figures.find((f) => f.figure === name)
    t.ok(figure !== undefined && Number.isFinite(figure.value) && figure.goal !== null, `the JSON has ${name} with its goal`)
  }
  const usage = json.teamVsLocal?.usage
  t.ok(usage?.ok, 'every request answered for the team key has its usage row')
  t.ok(
    (usage?.usageRows ?? 0) > 0 && usage?.usageRows === usage?.answeredRequests,
    `usage rows ${usage?.usageRows} = answered ${usage?.answeredRequests}`,
  )

  // continuation: the local proxy with streams.continuation enabled, reported against it.
  t.match(result.stdout, /\[continuation\] \(c\) streaming/, 'the continuation target ran its phases')
  t.match(result.stdout, /^\| \*\*continuation ÷ proxy\*\* \|/m, 'and its continuation ÷ proxy ratio rows')
  t.match(result.stdout, /## Stream continuation enabled ÷ disabled/, 'the continuation section is in the markdown')
  // team-redis: team mode with its limits in its own redis-server, reported against local mode too.
  t.match(result.stdout, /\[team-redis\] \(a\) non-streaming/, 'the team-redis target ran its phases')
  t.match(result.stdout, /^\| team-redis \|/m, 'team-redis has its rows in the phase tables')
  t.match(result.stdout, /^\| \*\*team-redis ÷ proxy\*\* \|/m, 'and its team-redis ÷ proxy ratio rows')
  t.match(result.stdout, /## Team mode with Redis-backed limits ÷ local mode/, 'the team-redis section is in the markdown')
  t.match(
    result.stdout,
    /\| \(a\) CPU µs per non-streaming request \| [^|]+ \| [^|]+ \| [\d.]+× \| ≤ 1\.25× \|/,
    'team-redis CPU per request over local, goal shown',
  )
  t.match(
    result.stdout,
    /\| \(d\) unloaded p50 ms, non-streaming \| [^|]+ \| [^|]+ \| [+−][\d.]+ ms \| ≤ \+0\.3 ms \|/,
    'team-redis p50 added, goal shown',
  )
  t.match(result.stdout, /### Redis commands per request/, 'the Redis commands table is in the markdown')
  const redisUsage = json.teamRedisVsLocal?.usage
  t.ok(
    redisUsage?.ok === true && redisUsage.usageRows > 0 && redisUsage.usageRows === redisUsage.answeredRequests,
    `team-redis usage rows ${redisUsage?.usageRows} = answered ${redisUsage?.answeredRequests}`,
  )
  const rows = json.redisCommands?.rows ?? []
  t.equal(rows.length, 6, 'a Redis row for each load: (a), (b), (c), (d) requests, (d) streams, (e)')
  for (const { row, chat, counts } of rows) {
    t.ok(counts.quiet && counts.failedCalls === 0 && counts.answered > 0, `${row}: quiet, no failed Redis calls, requests answered`)
    if (chat) t.ok(counts.sentPerRequest > 0 && counts.sentPerRequest <= 3, `${row}: ${counts.sentPerRequest} Redis commands per request`)
  }
  // One at a time, every request completes: admission (EVALSHA), then tpm settle + slot release together (EVALSHA).
  const unloaded = rows.find((r) => r.row === '(d) unloaded, non-streaming')?.counts
  t.same(
    { sentPerRequest: unloaded?.sentPerRequest, evalsha: unloaded?.byCommand.evalsha, sent: unloaded?.sentCommands },
    { sentPerRequest: 2, evalsha: 2 * (unloaded?.answered ?? 0), sent: ['evalsha'] },
    'unloaded: exactly 2 EVALSHA sent per request (admission; settle + release), no separate ZREM',
  )
})

interface Comparison {
  readonly figures: { readonly figure: string; readonly value: number; readonly goal: number | null }[]
  readonly usage?: { readonly ok: boolean; readonly usageRows: number; readonly answeredRequests: number }
}

interface SmokeReport {
  readonly targets: { readonly label: string }[]
  readonly teamVsLocal?: Comparison
  readonly teamRedisVsLocal?: Comparison
  readonly redisCommands?: {
    readonly rows: {
      readonly row: string
      readonly chat: boolean
      readonly counts: {
        readonly answered: number
        readonly sentPerRequest: number
        readonly byCommand: Readonly<Record<string, number>>
        readonly sentCommands: readonly string[]
        readonly failedCalls: number
        readonly quiet: boolean
      }
    }[]
  }
}
