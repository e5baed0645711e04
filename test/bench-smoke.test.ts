import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import t from 'tap'

/**
 * CI does not run the full benchmark, but it runs its smoke (a couple of seconds of every phase
 * against direct and proxy) so the bench cannot rot: it must start every process, drive every
 * phase, see no error or non-2xx, and write its tables.
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
  const json = JSON.parse(readFileSync(new URL('bench/results/smoke.json', root), 'utf8')) as Record<string, unknown>
  t.ok(json, 'results/smoke.json was written')
})
