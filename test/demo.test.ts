import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { connect } from 'node:net'
import t from 'tap'

/**
 * `toprouter-proxy demo` run the way a user runs it (`node dist/main.js demo`; npm test builds dist/
 * first): it exits 0 within a minute, prints the /status URL first, shows for every fault what the
 * app saw directly and through the proxy, and leaves no port it opened accepting connections.
 */

const root = new URL('..', import.meta.url)
const MAIN = new URL('dist/main.js', root)

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
  readonly seconds: number
}

function runCli(args: string[], timeoutMs: number): Promise<Run> {
  const startedAt = performance.now()
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN.pathname, ...args], {
      cwd: root,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr, seconds: (performance.now() - startedAt) / 1000 })
    })
  })
}

function connectError(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.once('connect', () => {
      socket.destroy()
      resolve('connected')
    })
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
  })
}

/** The table row for `name`: its direct and proxied cells. */
function row(stdout: string, name: string): { direct: string; proxy: string } {
  const line = stdout.split('\n').find((l) => l.startsWith(`${name} `) && l.includes(' | '))
  const [, direct = '', proxy = ''] = (line ?? '').split(' | ').map((cell) => cell.trim())
  return { direct, proxy }
}

t.test('demo --help documents the subcommand', async (t) => {
  const result = await runCli(['demo', '--help'], 10_000)
  t.equal(result.code, 0)
  t.match(result.stdout, /Usage: toprouter-proxy demo/)
  t.match(result.stdout, /nothing leaves the machine/)
  const bad = await runCli(['demo', '--nope'], 10_000)
  t.equal(bad.code, 2, 'an unknown flag exits 2')
})

t.test('the demo runs every fault both ways, under a minute, and closes every port it opened', { timeout: 90_000 }, async (t) => {
  t.ok(existsSync(MAIN), 'dist/ is built (npm test builds it first)')
  const result = await runCli(['demo'], 75_000)
  const out = result.stdout
  t.equal(result.code, 0, `exits 0${result.code === 0 ? '' : `:\n${out}\n${result.stderr}`}`)
  t.ok(result.seconds < 60, `under a minute (${result.seconds.toFixed(1)} s)`)
  t.equal(result.stderr, '', 'nothing on stderr')
  t.match(
    out.split('\n')[0],
    /^status page \(live while the demo runs\): http:\/\/127\.0\.0\.1:\d+\/status$/,
    'the /status URL comes first',
  )

  const cells = {
    rateLimited: row(out, 'rate-limited'),
    burst: row(out, 'burst-503'),
    reset: row(out, 'reset'),
    silent: row(out, 'silent'),
    cut: row(out, 'cut-stream'),
    continued: row(out, 'cut-continued'),
    outage: row(out, 'outage'),
  }
  // 429 with Retry-After: 1 — the app fails at once; through the proxy it is answered after the wait.
  t.match(cells.rateLimited.direct, /^429 RateLimitError rate_limit_exceeded after [\d.]+ s \(1 call\)$/)
  const waited = /^200 after ([\d.]+) s \(2 calls\)$/.exec(cells.rateLimited.proxy)
  t.ok(waited, `rate-limited through the proxy: 200 after 2 calls (${cells.rateLimited.proxy})`)
  t.ok(Number(waited?.[1]) >= 0.95, 'and the retry waited the Retry-After second')
  t.match(cells.burst.direct, /^503 InternalServerError after [\d.]+ s \(1 call\)$/)
  t.match(cells.burst.proxy, /^200 after [\d.]+ s \(3 calls\)$/)
  t.match(cells.reset.direct, /^APIConnectionError \(\w+\) after [\d.]+ s \(1 call\)$/)
  t.match(cells.reset.proxy, /^200 after [\d.]+ s \(2 calls\)$/)
  // A stream that never starts: the app waits out its own timeout; the proxy's first-event timeout retries.
  t.match(cells.silent.direct, /^APIConnectionTimeoutError after 3\.\d\d s \(1 call\)$/)
  const silent = /^whole answer, \d+ chunks, after ([\d.]+) s \(2 calls\)$/.exec(cells.silent.proxy)
  t.ok(
    silent !== null && Number(silent[1]) < 3,
    `silent through the proxy: the whole answer before the app's timeout (${cells.silent.proxy})`,
  )
  // A cut stream: a silent truncation directly; an error event (the SDK raises) through the proxy.
  t.match(cells.cut.direct, /^3 chunks, then a silent end \(no error, answer cut short\) after [\d.]+ s \(1 call\)$/)
  t.match(cells.cut.proxy, /^3 chunks, then error event: APIError stream_interrupted after [\d.]+ s \(1 call\)$/)
  // A dropped stream: an exception mid-stream directly; with continuation on, the whole answer.
  t.match(cells.continued.direct, /^3 chunks, then exception: /)
  t.match(cells.continued.proxy, /^whole answer, \d+ chunks, continued by the proxy, after [\d.]+ s \(2 calls\)$/)
  // The outage: five 503s directly; through the proxy five answers from the fallback, and the breaker opens.
  t.match(cells.outage.direct, /^5 × 503 InternalServerError service_unavailable, [\d.]+ s in all \(demo\/down calls: 1, 1, 1, 1, 1\)$/)
  t.match(
    cells.outage.proxy,
    /^5 × 200 from demo\/healthy \(fallback\), [\d.]+ s in all \(demo\/down calls: 3, [12], 0, 0, 0\), its breaker opened$/,
  )

  const ports = /^ports opened: (\d+) \(fake TopRouter\), (\d+) \(proxy\), both on 127\.0\.0\.1$/m.exec(out)
  t.ok(ports, 'the ports it opened are printed')
  t.match(out, /^closed: \d+ refuses connections \(ECONNREFUSED\), \d+ refuses connections \(ECONNREFUSED\)$/m, 'and reported closed')
  for (const port of [ports?.[1], ports?.[2]]) {
    t.equal(await connectError(Number(port)), 'ECONNREFUSED', `port ${port} refuses connections after the demo`)
  }
})
