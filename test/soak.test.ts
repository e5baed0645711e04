import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'

/**
 * The soak's 30-second version (the 10-minute one is `npm run soak`, not in CI): both modes, 200
 * streams at peak, a sample every 3 s, everything else as in the full run — clients leaving, upstream
 * faults, the probe inside the proxy, the slope checks, and in team mode one usage row per request.
 * It must pass and write its files (to a temporary directory, so the committed 10-minute results in
 * bench/results/ stay as they are). Nothing here is timed: a slow machine only makes it slower.
 */

interface SoakJson {
  readonly ok: boolean
  readonly modes: {
    readonly mode: string
    readonly problems: string[]
    readonly samples: Record<string, number>[]
    readonly slopes: { series: string; points: number; ok: boolean }[]
    readonly counts: {
      started: number
      bodySent: number
      peakOpenStreams: number
      aborted: Record<string, number>
      byKind: { stream: number; nonStreaming: number }
      hung: number
    }
    readonly faultsInjected: Record<string, number>
    readonly usage?: { usageRows: number; loggedRequests: number; clientBodySent: number; ok: boolean }
    readonly after: { upstreamActiveStreams: number }
  }[]
}

// Two 30-second runs plus their starts and drains: ~90 s, above .taprc's 60 s for a file.
t.setTimeout(200_000)

t.test('the 30-second soak passes in local and team mode and writes its table, JSON and plots', { timeout: 170_000 }, async (t) => {
  const root = new URL('..', import.meta.url)
  t.ok(existsSync(new URL('dist/main.js', root)), 'dist/ is built (npm test builds it first)')
  const out = mkdtempSync(join(tmpdir(), 'toprouter-soak-test-'))
  t.teardown(() => rmSync(out, { recursive: true, force: true }))
  const args = ['--import', 'tsx', 'bench/soak.ts', '--duration-s', '30', '--sample-s', '3', '--peak-streams', '200']
  args.push('--non-streaming-per-s', '20', '--mode', 'both', '--out-dir', out, '--name', 'soak-smoke')
  const child = spawn(process.execPath, args, {
    cwd: root,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk
  })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk
  })
  // SIGTERM: the soak stops its upstream and proxy before it exits.
  const stopChild = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
  }
  t.teardown(stopChild)
  const killer = setTimeout(stopChild, 160_000)
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve))
  clearTimeout(killer)
  t.equal(code, 0, `the soak exits 0${code === 0 ? '' : `:\n${stdout.slice(-3000)}\n${stderr.slice(-2000)}`}`)
  t.match(stdout, /soak passed/)
  t.match(stdout, /┤/, 'it printed a terminal chart while running')

  for (const file of ['soak-smoke.md', 'soak-smoke.json', 'soak-smoke-local.svg', 'soak-smoke-team.svg']) {
    t.ok(existsSync(join(out, file)), `${file} was written`)
  }
  for (const mode of ['local', 'team']) {
    t.match(readFileSync(join(out, `soak-smoke-${mode}.svg`), 'utf8'), /^<svg[\s\S]*RSS MB[\s\S]*<\/svg>$/, `${mode}: the plot is an SVG`)
  }
  const md = readFileSync(join(out, 'soak-smoke.md'), 'utf8')
  t.match(md, /## local mode/)
  t.match(md, /## team mode/)
  t.match(md, /\| t s \| RSS MB \| heap used MB \|/)

  const json = JSON.parse(readFileSync(join(out, 'soak-smoke.json'), 'utf8')) as SoakJson
  t.ok(json.ok, 'the JSON says the run passed')
  t.same(
    json.modes.map((m) => m.mode),
    ['local', 'team'],
  )
  for (const m of json.modes) {
    t.same(m.problems, [], `${m.mode}: no problems`)
    // 10 windows of 3 s in 30 s; a slow machine may lose one or two at the edges.
    t.ok(m.samples.length >= 6, `${m.mode}: ${m.samples.length} samples`)
    for (const key of ['rssMb', 'heapUsedMb', 'handles', 'sockets', 'eldP99Ms']) {
      t.ok(
        m.samples.every((s) => Number.isFinite(s[key])),
        `${m.mode}: every sample has ${key}`,
      )
    }
    t.same(
      m.slopes.map((s) => s.series),
      ['rssMb', 'heapUsedMb', 'handles', 'sockets', 'eldP99Ms'],
      `${m.mode}: a slope for each series`,
    )
    t.ok(
      m.slopes.every((s) => s.ok && s.points >= 3),
      `${m.mode}: each fitted over ≥ 3 points, none above its bound`,
    )
    t.ok(m.counts.peakOpenStreams >= 200, `${m.mode}: ${m.counts.peakOpenStreams} streams open at peak`)
    t.ok(m.counts.byKind.stream > 0 && m.counts.byKind.nonStreaming > 0, `${m.mode}: streaming and non-streaming requests`)
    const left = Object.values(m.counts.aborted).reduce((a, b) => a + b, 0)
    t.ok(left > m.counts.started * 0.15 && left < m.counts.started * 0.45, `${m.mode}: ${left} of ${m.counts.started} clients left early`)
    t.ok(
      Object.values(m.faultsInjected).every((n) => n > 0),
      `${m.mode}: every kind of upstream fault injected (${JSON.stringify(m.faultsInjected)})`,
    )
    t.equal(m.counts.hung, 0, `${m.mode}: no request hung`)
    t.equal(m.after.upstreamActiveStreams, 0, `${m.mode}: no upstream stream still written after the load`)
  }
  const usage = json.modes.find((m) => m.mode === 'team')?.usage
  t.ok(
    usage?.ok === true && usage.usageRows > 0 && usage.usageRows === usage.loggedRequests && usage.usageRows >= usage.clientBodySent,
    `team: usage rows ${usage?.usageRows} = logged ${usage?.loggedRequests} ≥ whole bodies sent ${usage?.clientBodySent}`,
  )
})
