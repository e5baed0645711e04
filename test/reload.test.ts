import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { stringify } from 'yaml'
import { loadConfig } from '../src/config.js'
import { planReload } from '../src/config-reload.js'
import { expectErrorShape } from './helpers/assert-error.js'
import { completion, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { freePort } from './helpers/free-port.js'

/** Hot reload through the real CLI: the config file is rewritten, then SIGHUP or POST /admin/reload. */

const PRIMARY = 'acme/primary'
const BACKUP = 'acme/backup'
const ADMIN_KEY = 'admin-reload-0123456789abcdef'

interface RunningCli {
  readonly child: ChildProcess
  readonly url: string
  readonly configPath: string
  readonly dir: string
  readonly output: () => string
  /** Rewrites the config file with these sections. */
  write(sections: Record<string, unknown>): void
  /** Sends SIGHUP and waits for the reload's log line (the n-th one of this process). */
  sighup(): Promise<Record<string, unknown>>
  /** Waits for the n-th reload log line (ok or refused). */
  reloadLine(n: number): Promise<Record<string, unknown>>
  logLines(): Array<Record<string, unknown>>
}

async function startCli(
  t: Test,
  sections: Record<string, unknown>,
  options: { args?: string[]; env?: Record<string, string> } = {},
): Promise<RunningCli> {
  const dir = mkdtempSync(join(tmpdir(), 'toprouter-reload-'))
  const configPath = join(dir, 'config.yaml')
  const write = (next: Record<string, unknown>) => writeFileSync(configPath, stringify(next))
  write(sections)
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', '--config', configPath, ...(options.args ?? [])], {
    cwd: new URL('..', import.meta.url),
    env: { PATH: process.env.PATH ?? '', TOPROUTER_API_KEY: 'sk-reload-test-key', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  let output = ''
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()))
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()))
  const logLines = () =>
    output
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>)
  const reloadLine = async (n: number) => {
    const deadline = Date.now() + 10000
    while (Date.now() < deadline) {
      const lines = logLines().filter((line) => line.reload !== undefined)
      if (lines.length >= n) return lines[n - 1] as Record<string, unknown>
      await sleep(20)
    }
    throw new Error(`no reload line #${n}:\n${output}`)
  }
  let reloads = 0
  const deadline = Date.now() + 15000
  while (Date.now() < deadline) {
    const match = /listening on 127\.0\.0\.1:(\d+)/.exec(output)
    if (match) {
      return {
        child,
        url: `http://127.0.0.1:${match[1]}`,
        configPath,
        dir,
        output: () => output,
        write,
        logLines,
        reloadLine,
        async sighup() {
          reloads += 1
          child.kill('SIGHUP')
          return reloadLine(reloads)
        },
      }
    }
    if (child.exitCode !== null) break
    await sleep(50)
  }
  throw new Error(`the proxy did not start:\n${output}`)
}

function chat(url: string, model: string, headers: Record<string, string> = {}) {
  return request(`${url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }),
  })
}

function modelOf(body: Buffer): string {
  return (JSON.parse(body.toString()) as { model: string }).model
}

t.test('SIGHUP applies a new fallback to the next request; a request in flight keeps the old config', async (t) => {
  const upstream = await startFakeUpstream(t, async (_req, res, recorded) => {
    const model = modelOf(recorded.body)
    if (model === PRIMARY) {
      await sleep(600)
      return sendJson(res, 503, { error: { message: 'overloaded', type: 'server_error', code: 'overloaded' } })
    }
    return sendJson(res, 200, completion(model))
  })
  const base = { log: { level: 'info' }, retry: { maxAttempts: 1 } }
  const cli = await startCli(t, base, { args: ['--port', '0', '--upstream', upstream.url] })

  const inFlight = chat(cli.url, PRIMARY)
  while (upstream.requests.length === 0) await sleep(10)
  cli.write({ ...base, fallbacks: { [PRIMARY]: [BACKUP] } })
  const line = await cli.sighup()
  t.equal(line.reload, 'ok')
  t.same(line.changed, [`fallbacks.${PRIMARY}`], 'the info line names the changed key')
  t.same(line.needsRestart, [])
  t.equal(line.level, 30, 'info')

  const next = await chat(cli.url, PRIMARY)
  t.equal(next.statusCode, 200, 'the request after the reload falls back')
  t.equal(modelOf(Buffer.from(await next.body.text())), BACKUP, 'served by the fallback')
  const old = await inFlight
  t.equal(old.statusCode, 503, 'the request in flight during the reload kept the config without the fallback')
  await old.body.dump()
  t.equal(cli.child.exitCode, null, 'SIGHUP did not end the process')

  // A second SIGHUP with the file unchanged: nothing to apply.
  const again = await cli.sighup()
  t.same(again.changed, [])
  t.match(again.msg, /nothing to apply/)

  // log.level applies at once: the request log line (info) is no longer written.
  cli.write({ ...base, fallbacks: { [PRIMARY]: [BACKUP] }, log: { level: 'warn' } })
  t.same((await cli.sighup()).changed, ['log.level'])
  const requestLines = () => cli.logLines().filter((line) => line.route !== undefined).length
  const before = requestLines()
  t.ok(before > 0, 'request lines were written at level info')
  const quiet = await chat(cli.url, BACKUP)
  t.equal(quiet.statusCode, 200)
  await quiet.body.dump()
  await sleep(200)
  t.equal(requestLines(), before, 'no request line at level warn')
})

t.test(
  'a breaker opened before a reload stays open after one that left breaker.* alone; breaker.* changed starts them again',
  async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 503, { error: { message: 'down', type: 'server_error' } }))
    const base = {
      retry: { maxAttempts: 1 },
      breaker: { volumeThreshold: 1, errorThresholdPercentage: 50, resetTimeoutMs: 60000 },
    }
    const cli = await startCli(t, base, { args: ['--port', '0', '--upstream', upstream.url] })
    const first = await chat(cli.url, PRIMARY)
    t.equal(first.statusCode, 503)
    await first.body.dump()
    await expectErrorShape(t, await chat(cli.url, PRIMARY), { status: 503, code: 'circuit_open' })
    const called = upstream.requests.length

    cli.write({ ...base, retry: { maxAttempts: 2 }, fallbacks: { 'other/model': [BACKUP] } })
    const line = await cli.sighup()
    t.same([...(line.changed as string[])].sort(), ['fallbacks.other/model', 'retry.maxAttempts'])
    await expectErrorShape(t, await chat(cli.url, PRIMARY), { status: 503, code: 'circuit_open' })
    t.equal(upstream.requests.length, called, 'still open: the upstream was not called')
    const ready = await request(`${cli.url}/readyz`)
    t.match(await ready.body.text(), /"acme\/primary":"open"/)

    cli.write({ ...base, retry: { maxAttempts: 1 }, breaker: { ...base.breaker, resetTimeoutMs: 30000 } })
    const rebuilt = await cli.sighup()
    t.same(rebuilt.changed, ['retry.maxAttempts', 'breaker.resetTimeoutMs', 'fallbacks.other/model'])
    const after = await chat(cli.url, PRIMARY)
    t.equal(after.statusCode, 503)
    t.not(JSON.parse(await after.body.text()).error.code, 'circuit_open', 'breaker.* changed: the breakers start again, closed')
    t.equal(upstream.requests.length, called + 1)
  },
)

t.test('an invalid file is refused naming the key, the proxy keeps serving; a changed listen.port needs a restart', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res, recorded) => {
    const model = modelOf(recorded.body)
    if (model === PRIMARY) return sendJson(res, 503, { error: { message: 'down', type: 'server_error' } })
    return sendJson(res, 200, completion(model))
  })
  const port = await freePort()
  const base = {
    listen: { port },
    upstream: { baseUrl: upstream.url },
    retry: { maxAttempts: 1 },
    fallbacks: { [PRIMARY]: [BACKUP] },
  }
  const cli = await startCli(t, base)
  t.equal(cli.url, `http://127.0.0.1:${port}`)

  cli.write({ ...base, retry: { maxAttempts: 'x' }, fallbacks: {} })
  const invalid = await cli.sighup()
  t.equal(invalid.reload, 'invalid')
  t.equal(invalid.level, 50, 'error')
  t.match(invalid.msg, /running config stays: config error: retry\.maxAttempts must be a whole number, found "x"/)

  cli.write({ ...base, retyr: { maxAttempts: 2 } })
  const unknown = await cli.sighup()
  t.match(unknown.msg, /unknown key "retyr"/)
  const served = await chat(cli.url, PRIMARY)
  t.equal(served.statusCode, 200, 'the old config (with its fallback) still serves')
  await served.body.dump()

  const otherPort = await freePort()
  cli.write({ ...base, listen: { port: otherPort }, fallbacks: {} })
  const moved = await cli.sighup()
  t.same(moved.changed, [`fallbacks.${PRIMARY}`])
  t.same(moved.needsRestart, ['listen.port'])
  const warn = cli.logLines().find((line) => line.key === 'listen.port')
  t.equal(warn?.level, 40)
  t.equal(warn?.msg, 'listen.port changed: needs a restart; the running value stays')
  const stillHere = await chat(cli.url, PRIMARY)
  t.equal(stillHere.statusCode, 503, 'the rest applied: no fallback any more, on the old port')
  await stillHere.body.dump()
  const refused = await request(`http://127.0.0.1:${otherPort}/healthz`).then(
    () => false,
    (err: { code?: string }) => err.code === 'ECONNREFUSED',
  )
  t.ok(refused, 'nothing listens on the new port')
  t.notMatch(cli.output(), /sk-reload-test-key/)
})

t.test('team mode: POST /admin/reload needs the admin key, applies a valid file, refuses an invalid one', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res, recorded) => sendJson(res, 200, completion(modelOf(recorded.body))))
  const dir = mkdtempSync(join(tmpdir(), 'toprouter-reload-team-'))
  const base = { team: { enabled: true, storeUrl: `sqlite:${join(dir, 'team.db')}` }, retry: { maxAttempts: 3 } }
  const cli = await startCli(t, base, {
    args: ['--port', '0', '--upstream', upstream.url],
    env: { TOPROUTER_PROXY_ADMIN_KEY: ADMIN_KEY },
  })
  const reload = (headers: Record<string, string>) => request(`${cli.url}/admin/reload`, { method: 'POST', headers })
  const admin = { authorization: `Bearer ${ADMIN_KEY}` }

  await expectErrorShape(t, await reload({}), { status: 401, code: 'invalid_api_key' })
  await expectErrorShape(t, await reload({ authorization: 'Bearer not-the-admin-key-at-all' }), { status: 401, code: 'invalid_api_key' })
  t.equal(cli.logLines().filter((line) => line.reload !== undefined).length, 0, 'no reload without the key')

  const created = await request(`${cli.url}/admin/keys`, {
    method: 'POST',
    headers: { ...admin, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'alice' }),
  })
  t.equal(created.statusCode, 201)
  const member = { authorization: `Bearer ${((await created.body.json()) as { key: string }).key}` }
  for (let i = 0; i < 2; i++) {
    const answer = await chat(cli.url, BACKUP, member)
    t.equal(answer.statusCode, 200, 'no rpm limit yet')
    await answer.body.dump()
  }

  cli.write({ ...base, retry: { maxAttempts: 2 }, team: { ...base.team, maxQueueWaitMs: 10, defaults: { rpm: 1 } } })
  const ok = await reload(admin)
  t.equal(ok.statusCode, 200)
  t.same(await ok.body.json(), {
    reloaded: true,
    changed: ['team.defaults.rpm', 'retry.maxAttempts'],
    needsRestart: ['team.maxQueueWaitMs'],
  })
  const first = await chat(cli.url, BACKUP, member)
  t.equal(first.statusCode, 200)
  await first.body.dump()
  await expectErrorShape(t, await chat(cli.url, BACKUP, member), { status: 429, code: 'key_rate_limit_exceeded' })

  cli.write({ ...base, breaker: { volumeThreshold: 0 } })
  await expectErrorShape(t, await reload(admin), {
    status: 422,
    type: 'invalid_request_error',
    code: 'config_invalid',
    message: /^config error: breaker\.volumeThreshold must be a number >= 1, found 0/,
  })
  const metrics = await (await request(`${cli.url}/metrics`)).body.text()
  t.match(metrics, /toprouter_proxy_config_reloads_total\{result="ok"\} 1/)
  t.match(metrics, /toprouter_proxy_config_reloads_total\{result="invalid"\} 1/)
})

t.test('planReload: restart-only keys keep their running value, the rest is the loaded config, frozen', async (t) => {
  const load = (yaml: string) => loadConfig({ configPath: 'c.yaml', readFile: () => yaml, env: {} })
  const running = load('listen: { port: 9000 }\nserver: { bodyLimitBytes: 2048 }\nfallbacks: { "a/b.c": [d] }\n')
  const loaded = load('listen: { port: 9001 }\nserver: { bodyLimitBytes: 4096, drainTimeoutMs: 5 }\nlog: { level: debug }\n')
  const plan = planReload(running, loaded)
  t.same(plan.changed, ['server.drainTimeoutMs', 'fallbacks.a/b.c', 'log.level'])
  t.same(plan.needsRestart, ['listen.port', 'server.bodyLimitBytes'])
  t.equal(plan.config.listen.port, 9000)
  t.equal(plan.config.server.bodyLimitBytes, 2048)
  t.equal(plan.config.server.drainTimeoutMs, 5)
  t.same(plan.config.fallbacks, {})
  t.ok(Object.isFrozen(plan.config.server), 'frozen')
  const team = planReload(
    load('team: { storeUrl: "sqlite:a.db", defaults: { rpm: 1 } }\n'),
    load('team: { storeUrl: "sqlite:b.db", defaults: { rpm: 2 } }\n'),
  )
  t.same(team.changed, ['team.defaults.rpm'])
  t.same(team.needsRestart, ['team.storeUrl'])
  t.equal(team.config.team.storeUrl, 'sqlite:a.db')
  t.equal(team.config.team.defaults.rpm, 2)
  t.equal(planReload(running, running).config, running, 'nothing changed: the same snapshot')
})
