import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import type { ServerResponse } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { type Dispatcher, request } from 'undici'
import { stringify } from 'yaml'
import { migrationProvider } from '../src/team/store/migrations.js'
import { expectErrorShape } from './helpers/assert-error.js'
import {
  chunkEvent,
  completion,
  type FakeUpstream,
  type RecordedRequest,
  sendJson,
  sleep,
  startFakeUpstream,
} from './helpers/fake-upstream.js'
import { freshDatabase, pgRows, postgresSkip, privatePostgres, privatePostgresSkip, type Rows } from './helpers/postgres.js'
import { needRedisServer, needSharedRedis, prefixFor, privateRedis, SHARED_REDIS } from './helpers/redis.js'
import { until } from './helpers/until.js'

/**
 * The fleet, as a user runs it: two replicas of the real CLI (`src/main.ts` through tsx, separate
 * processes, each with its own YAML config) on one PostgreSQL and one Redis, behind nothing but
 * their own ports, with a fake TopRouter that counts every call. Keys are made with the real
 * `keys create` command or the admin API; usage is read back with the `usage` command, the admin
 * API, or straight from the `usage` table.
 *
 * - one fleet started at the same moment on an empty database: migrations applied once, both serve;
 *   rpm 10 → exactly 10 of 20 requests spread over both; maxConcurrent 2 across both; a revocation
 *   on A refused on B within 1 s (keyCacheTtlMs ten minutes); a 429 `Retry-After: 3` seen by A → B
 *   makes no call to that model for those 3 s; usage from both sums exactly to what the upstream counted;
 * - Redis (a private redis-server) killed mid-run: both keep serving, limits per replica, then shared
 *   again once it is back; `/readyz` says `degraded: ["redis"]` meanwhile;
 * - PostgreSQL (a private cluster) stopped mid-run: both keep serving cached keys, usage waits in
 *   memory, and none of it is lost once it returns;
 * - a replica killed with SIGKILL loses at most `usageFlushMs` worth of usage, one stopped with SIGTERM none.
 *
 * The budget case (a budget spent through A refuses on B) is not here: budgets are moving into Redis.
 */

const ROOT = fileURLToPath(new URL('..', import.meta.url))
/** The real CLI from source, as test/shutdown.test.ts starts it (`npm test` does not need a build for it). */
const CLI = ['--import', 'tsx', 'src/main.ts']
const UPSTREAM_KEY = 'sk-fleet-upstream-key-0123456789'
const ADMIN_KEY = 'admin-fleet-0123456789abcdefghijkl'
const MODEL = 'google/gemini-3.5-flash'
/** How long a replica may take to print its "listening" line (two start together on a 2-core machine). */
const START_TIMEOUT_MS = 30_000
const run = promisify(execFile)
/** How long after A's answer a model pause may take to reach B over Redis pub/sub. */
const PAUSE_PROPAGATION_MS = 100
/** B's usageFlushMs in the SIGKILL case. */
const KILLED_FLUSH_MS = 300
/** How long a flush's INSERT may take once its timer fired. */
const WRITE_SLACK_MS = 200
/** The shared PostgreSQL's skip (outside CI, when it is not there); the private cluster's is privatePostgresSkip. */
const pgSkip = await postgresSkip(t)
// Eight replicas and two CLI runs through tsx take ~35 s on a 2-core machine by themselves; more
// when the rest of the suite runs beside them.
t.setTimeout(180_000)

// ---------------------------------------------------------------------------------------------
// Replicas: the real CLI in child processes

interface Replica {
  readonly name: string
  readonly child: ChildProcess
  readonly url: string
  readonly output: () => string
  /** Resolves when the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

/** Writes a YAML config in a directory of the test's own (removed after it); returns its path. */
function writeConfig(t: Test, sections: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'toprouter-fleet-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'config.yaml')
  writeFileSync(path, stringify(sections))
  return path
}

function replicaEnv(): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '', TOPROUTER_API_KEY: UPSTREAM_KEY, TOPROUTER_PROXY_ADMIN_KEY: ADMIN_KEY }
}

/**
 * Spawns one replica per config in the same tick (so they start at the same moment), then waits
 * for every one's "listening on 127.0.0.1:PORT" line. Each is SIGKILLed after the test if still running.
 */
async function startReplicas(
  t: Test,
  upstreamUrl: string,
  configs: ReadonlyArray<{ name: string; configPath: string }>,
): Promise<Replica[]> {
  const spawned = configs.map(({ name, configPath }) => {
    const child = spawn(process.execPath, [...CLI, '--port', '0', '--upstream', upstreamUrl, '--config', configPath], {
      cwd: ROOT,
      env: replicaEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let output = ''
    child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()))
    child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()))
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    )
    t.teardown(async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGKILL')
      await exited
    })
    return { name, child, output: () => output, exited }
  })
  return Promise.all(
    spawned.map(async (one) => {
      const deadline = performance.now() + START_TIMEOUT_MS
      while (performance.now() < deadline) {
        const match = /listening on 127\.0\.0\.1:(\d+)/.exec(one.output())
        if (match) return { ...one, url: `http://127.0.0.1:${match[1]}` }
        if (one.child.exitCode !== null) break
        await sleep(25)
      }
      throw new Error(`replica ${one.name} did not start:\n${one.output()}`)
    }),
  )
}

/** The replica's JSON log lines. */
function logLines(replica: Replica): Array<Record<string, unknown>> {
  return replica
    .output()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
}

/** The `keys` / `usage` command, run as a user runs it (no TOPROUTER_API_KEY, no server needed). */
async function cli(args: string[], configPath: string): Promise<unknown> {
  const { stdout } = await run(process.execPath, [...CLI, ...args, '--config', configPath, '--json'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '' },
  })
  return JSON.parse(stdout) as unknown
}

// ---------------------------------------------------------------------------------------------
// What a client does

interface ChatOptions {
  readonly model?: string
  readonly stream?: boolean
  /** The user message; the fake upstream sees it, so a test can tell its requests apart. */
  readonly content?: string
}

function chat(replica: Replica, secret: string, options: ChatOptions = {}): Promise<Dispatcher.ResponseData> {
  return request(`${replica.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
    body: JSON.stringify({
      model: options.model ?? MODEL,
      messages: [{ role: 'user', content: options.content ?? 'hi' }],
      ...(options.stream === true ? { stream: true } : {}),
    }),
  })
}

interface Answer {
  readonly status: number
  readonly code: string | undefined
  readonly requestId: string
  readonly retryAfter: string | undefined
  readonly text: string
  /** performance.now() when the whole answer had arrived. */
  readonly atMs: number
}

/** A chat request, its answer read whole. */
async function ask(replica: Replica, secret: string, options: ChatOptions = {}): Promise<Answer> {
  const res = await chat(replica, secret, options)
  const text = await res.body.text()
  let code: string | undefined
  if (res.statusCode >= 400) code = (JSON.parse(text) as { error?: { code?: string } }).error?.code
  const retryAfter = res.headers['retry-after']
  return {
    status: res.statusCode,
    code,
    requestId: String(res.headers['x-request-id']),
    retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined,
    text,
    atMs: performance.now(),
  }
}

async function adminRequest(replica: Replica, method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown) {
  const res = await request(`${replica.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_KEY}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  })
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> }
}

/** A key made through a replica's admin API: `POST /admin/keys`. */
async function createKey(t: Test, replica: Replica, fields: Record<string, unknown>): Promise<{ id: string; secret: string }> {
  const created = await adminRequest(replica, 'POST', '/admin/keys', fields)
  t.equal(created.status, 201, `key ${String(fields.name)} created through ${replica.name}'s admin API`)
  return { id: String(created.body.id), secret: String(created.body.key) }
}

/** A metric without labels from the replica's /metrics, or undefined. */
async function metric(replica: Replica, name: string): Promise<number | undefined> {
  const res = await request(`${replica.url}/metrics`)
  const text = await res.body.text()
  const match = new RegExp(`^${name} (\\S+)$`, 'm').exec(text)
  return match ? Number(match[1]) : undefined
}

async function readyz(replica: Replica): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await request(`${replica.url}/readyz`)
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> }
}

/**
 * A request left in flight while the test does other things: should the test fail before awaiting
 * it, its rejection (the replica killed at teardown) is not an unhandled one that fails the next test.
 */
function inFlight<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => {})
  return promise
}

const count = <T>(items: readonly T[], keep: (item: T) => boolean) => items.filter(keep).length

// ---------------------------------------------------------------------------------------------
// The fake TopRouter

interface Asked {
  readonly model: string
  readonly stream: boolean
  readonly includeUsage: boolean
  readonly content: string
}

function asked(recorded: RecordedRequest): Asked {
  const body = JSON.parse(recorded.body.toString()) as {
    model?: string
    stream?: boolean
    stream_options?: { include_usage?: boolean }
    messages?: Array<{ content?: string }>
  }
  return {
    model: body.model ?? '',
    stream: body.stream === true,
    includeUsage: body.stream_options?.include_usage === true,
    content: body.messages?.[0]?.content ?? '',
  }
}

interface Tokens {
  readonly prompt: number
  readonly completion: number
}

/** The upstream's token counts differ per call, so a sum can only match if every record is counted once. */
const tokensOfCall = (index: number): Tokens => ({ prompt: 10 + index, completion: 1 + (index % 7) })

/**
 * A 200 with the call's usage: JSON, or a stream whose usage chunk comes only when
 * `include_usage` was asked for (as TopRouter does). Returns the tokens it reported (none for a
 * stream that was not asked for them).
 */
function answerWithUsage(res: ServerResponse, recorded: RecordedRequest, index: number): Tokens | undefined {
  const request = asked(recorded)
  const tokens = tokensOfCall(index)
  const usage = { prompt_tokens: tokens.prompt, completion_tokens: tokens.completion, total_tokens: tokens.prompt + tokens.completion }
  if (!request.stream) {
    sendJson(res, 200, { ...completion(request.model), usage })
    return tokens
  }
  res.writeHead(200, { 'content-type': 'text/event-stream' })
  res.write(chunkEvent(request.model, 0, 'Hel'))
  res.write(chunkEvent(request.model, 1, 'lo', 'stop'))
  if (request.includeUsage) res.write(`data: ${JSON.stringify({ id: 'gen-456', object: 'chat.completion.chunk', choices: [], usage })}\n\n`)
  res.end('data: [DONE]\n\n')
  return request.includeUsage ? tokens : undefined
}

interface CountingUpstream extends FakeUpstream {
  /** The tokens every 200 answer reported, in call order. */
  readonly reported: Tokens[]
  /** Calls for `model` so far. */
  callsFor(model: string): number
}

/**
 * The fake TopRouter of a fleet: every call answered 200 with usage, unless `special` answers it
 * (it returns true when it did).
 */
async function countingUpstream(
  t: Test,
  special: (res: ServerResponse, request: Asked) => Promise<boolean> | boolean = () => false,
): Promise<CountingUpstream> {
  const reported: Tokens[] = []
  const upstream = await startFakeUpstream(t, async (_req, res, recorded, index) => {
    if (await special(res, asked(recorded))) return
    const tokens = answerWithUsage(res, recorded, index)
    if (tokens !== undefined) reported.push(tokens)
  })
  return Object.assign(upstream, {
    reported,
    callsFor: (model: string) => count(upstream.requests, (recorded) => asked(recorded).model === model),
  })
}

// ---------------------------------------------------------------------------------------------
// The store, read straight from PostgreSQL

interface UsageRowSeen {
  readonly requestId: string
  readonly keyId: string
  readonly status: number
  readonly attempts: number
  readonly promptTokens: number | null
  readonly completionTokens: number | null
  readonly totalTokens: number | null
  readonly stream: boolean
}

const numberOrNull = (value: unknown) => (value === null || value === undefined ? null : Number(value))

async function usageRows(rows: Rows): Promise<UsageRowSeen[]> {
  return (await rows('select * from usage order by time, id')).map((row) => ({
    requestId: String(row.request_id),
    keyId: String(row.key_id),
    status: Number(row.status),
    attempts: Number(row.attempts),
    promptTokens: numberOrNull(row.prompt_tokens),
    completionTokens: numberOrNull(row.completion_tokens),
    totalTokens: numberOrNull(row.total_tokens),
    stream: Number(row.stream) === 1,
  }))
}

const sum = (values: ReadonlyArray<number | null>) => values.reduce<number>((total, value) => total + (value ?? 0), 0)

// ---------------------------------------------------------------------------------------------

t.test('one PostgreSQL, one Redis, two replicas started at the same moment on an empty database', { skip: pgSkip }, async (t) => {
  if (!(await needSharedRedis(t))) return
  const db = await freshDatabase(t)
  const redisKeyPrefix = prefixFor(t)
  const PAUSED_MODEL = 'openai/gpt-5'
  const HELD_MODEL = 'anthropic/claude-4.6-sonnet'
  let pausedOnce = false
  /** Requests the upstream holds, by their message, until the test lets them go. */
  const held = new Map<string, () => void>()
  t.teardown(() => {
    for (const release of held.values()) release()
  })
  const upstream = await countingUpstream(t, async (res, request) => {
    if (request.model === PAUSED_MODEL && !pausedOnce) {
      pausedOnce = true
      sendJson(res, 429, { error: { message: 'slow down', type: 'rate_limit_error', code: 'rate_limit_exceeded' } }, { 'retry-after': '3' })
      return true
    }
    // Held until the test lets it go: a request in flight for as long as the test needs (at most
    // 10 s, so a test that fails does not hang on it).
    if (request.model === HELD_MODEL) {
      await new Promise<void>((resolve) => {
        held.set(request.content, resolve)
        setTimeout(resolve, 10_000).unref()
      })
    }
    return false
  })
  const configPath = writeConfig(t, {
    // One attempt per model: A's 429 is its answer, not waited out and retried.
    retry: { maxAttempts: 1 },
    team: { enabled: true, storeUrl: db.storeUrl, redisUrl: SHARED_REDIS, redisKeyPrefix, keyCacheTtlMs: 600_000, usageFlushMs: 100 },
  })
  t.same(
    await db.rows("select table_name from information_schema.tables where table_schema = 'public'"),
    [],
    'the database is empty before the replicas start',
  )
  const [a, b] = (await startReplicas(t, upstream.url, [
    { name: 'A', configPath },
    { name: 'B', configPath },
  ])) as [Replica, Replica]
  /** Every chat request this fleet was sent: each is one usage record (refusals included). */
  let chats = 0
  const send = (replica: Replica, secret: string, options: ChatOptions = {}) => {
    chats++
    return ask(replica, secret, options)
  }
  const sendRaw = (replica: Replica, secret: string, options: ChatOptions = {}) => {
    chats++
    return chat(replica, secret, options)
  }

  await t.test('both reach listening; the migrations were applied once; both serve', async (t) => {
    const expected = Object.keys(await migrationProvider.getMigrations()).sort()
    const applied = (await db.rows('select name from kysely_migration order by name')).map((row) => row.name)
    t.same(applied, expected, 'each migration recorded exactly once')
    const tables = (await db.rows("select table_name from information_schema.tables where table_schema = 'public' order by 1")).map(
      (row) => row.table_name,
    )
    t.same(tables, ['keys', 'kysely_migration', 'kysely_migration_lock', 'usage'])
    for (const replica of [a, b]) {
      t.same(
        logLines(replica).filter((line) => Number(line.level) >= 50),
        [],
        `replica ${replica.name} logged no error while starting`,
      )
    }
    const erin = await createKey(t, b, { name: 'erin' })
    for (const replica of [a, b]) {
      const answer = await send(replica, erin.secret)
      t.equal(answer.status, 200, `replica ${replica.name} serves`)
    }
    t.equal(upstream.requests.length, 2)
  })

  await t.test('rpm 10 (key made with `keys create --rpm 10`): exactly 10 of 20 requests spread over both are admitted', async (t) => {
    const created = (await cli(['keys', 'create', '--name', 'alice', '--rpm', '10'], configPath)) as { key: string; rpm: number }
    t.equal(created.rpm, 10)
    t.match(created.key, /^tpk_/, 'the CLI printed the secret')
    const before = upstream.requests.length
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => send(i % 2 === 0 ? a : b, created.key)))
    t.equal(
      count(answers, (answer) => answer.status === 200),
      10,
      'exactly 10 admitted',
    )
    const refused = answers.filter((answer) => answer.status !== 200)
    t.equal(refused.length, 10, '10 refused')
    t.same(new Set(refused.map((answer) => `${answer.status} ${answer.code}`)), new Set(['429 key_rate_limit_exceeded']))
    for (const answer of refused)
      t.ok(Number(answer.retryAfter) >= 1 && Number(answer.retryAfter) <= 60, `Retry-After ${answer.retryAfter}`)
    t.equal(upstream.requests.length - before, 10, 'the upstream got exactly the 10 admitted')
    for (const replica of [a, b]) {
      await expectErrorShape(t, await sendRaw(replica, created.key), {
        status: 429,
        code: 'key_rate_limit_exceeded',
        message: /10 requests per minute/,
      })
    }
    t.equal(upstream.requests.length - before, 10, 'nor the two after')
  })

  await t.test('maxConcurrent 2 across both: a third in flight is refused on either; a slot freed on A admits on B', async (t) => {
    const bob = await createKey(t, a, { name: 'bob', maxConcurrent: 2 })
    const before = upstream.requests.length
    const first = inFlight(send(a, bob.secret, { model: HELD_MODEL, content: 'bob 1 via A' }))
    const second = inFlight(send(b, bob.secret, { model: HELD_MODEL, content: 'bob 2 via B' }))
    t.ok(await until(() => held.size === 2, 5_000), 'two in flight, one through each replica')
    for (const replica of [a, b]) {
      await expectErrorShape(t, await sendRaw(replica, bob.secret, { content: `bob refused by ${replica.name}` }), {
        status: 429,
        code: 'key_rate_limit_exceeded',
        message: /2 requests at once/,
      })
    }
    t.equal(upstream.requests.length - before, 2, 'the refused ones never reached the upstream')
    held.get('bob 1 via A')?.()
    held.delete('bob 1 via A')
    t.equal((await first).status, 200, "A's request ends")
    await sleep(100) // the slot's release is one Redis command, not awaited by the answer
    const third = inFlight(send(b, bob.secret, { model: HELD_MODEL, content: 'bob 3 via B' }))
    t.ok(await until(() => held.has('bob 3 via B'), 5_000), "B admitted a third: A's slot was freed for it")
    for (const release of held.values()) release()
    held.clear()
    t.same([(await second).status, (await third).status], [200, 200])
    t.equal(upstream.requests.length - before, 3)
  })

  await t.test('revoked through A (keyCacheTtlMs ten minutes): B refuses it within 1 s', async (t) => {
    const carol = await createKey(t, a, { name: 'carol' })
    t.equal((await send(b, carol.secret)).status, 200, 'served by B, which now has the key cached')
    t.equal((await send(a, carol.secret)).status, 200, 'served by A')
    const revoked = await adminRequest(a, 'DELETE', '/admin/keys/carol')
    t.equal(revoked.status, 200)
    t.ok(revoked.body.revokedAt, 'revokedAt set')
    const revokedAt = performance.now()
    let answer: Answer | undefined
    await until(
      async () => {
        answer = await send(b, carol.secret)
        return answer.status !== 200
      },
      1_000,
      20,
    )
    const took = performance.now() - revokedAt
    const callsAtRefusal = upstream.requests.length
    t.equal(answer?.status, 401, `B refuses it ${Math.round(took)} ms after the revocation`)
    t.ok(took < 1_000, 'within 1 s')
    t.equal(answer?.code, 'key_revoked')
    await expectErrorShape(t, await sendRaw(b, carol.secret), { status: 401, code: 'key_revoked' })
    await expectErrorShape(t, await sendRaw(a, carol.secret), { status: 401, code: 'key_revoked' })
    t.equal(upstream.requests.length, callsAtRefusal, 'no call reached the upstream once B refused it')
  })

  await t.test('a budget spent through A is refused on B: 402 budget_exceeded, no upstream call', async (t) => {
    const dora = await createKey(t, a, { name: 'dora', budgetTokens: 30, budgetPeriod: 'day' })
    const spent = await send(a, dora.secret)
    t.equal(spent.status, 200, 'A serves it: nothing spent yet')
    const tokens = upstream.reported.at(-1)
    t.ok(
      tokens !== undefined && tokens.prompt + tokens.completion >= 30,
      'that one answer spends the whole budget (one request may overshoot)',
    )
    await sleep(100) // the spend is added by one Redis command after the answer, not awaited by it
    const before = upstream.requests.length
    for (const replica of [b, a]) {
      await expectErrorShape(t, await sendRaw(replica, dora.secret), {
        status: 402,
        code: 'budget_exceeded',
        message: /daily budget is spent/,
      })
    }
    t.equal(upstream.requests.length, before, 'neither replica called the upstream')
  })

  await t.test('a 429 with Retry-After: 3 seen by A: B makes no call to that model for those 3 s, then calls it again', async (t) => {
    const frank = await createKey(t, b, { name: 'frank' })
    const first = await send(a, frank.secret, { model: PAUSED_MODEL })
    t.equal(first.status, 429, "A relays the upstream's 429")
    t.equal(first.retryAfter, '3', 'with its Retry-After: 3')
    const pushedBackAt = upstream.requests.at(-1)?.receivedAt ?? 0
    t.equal(upstream.callsFor(PAUSED_MODEL), 1)
    // The pause reaches B over Redis pub/sub; B's first request may not beat it by more than this.
    await sleep(PAUSE_PROPAGATION_MS)
    const duringPause: Answer[] = []
    while (performance.now() < pushedBackAt + 3_000 - 150) {
      duringPause.push(await send(b, frank.secret, { model: PAUSED_MODEL }))
      await sleep(150)
    }
    t.ok(duringPause.length >= 10, `${duringPause.length} requests to B during the pause`)
    t.same(
      new Set(duringPause.map((answer) => `${answer.status} ${answer.code}`)),
      new Set(['429 rate_limit_exceeded']),
      'B answers each 429',
    )
    const seconds = duringPause.map((answer) => Number(answer.retryAfter))
    t.ok(
      seconds.every((s) => s >= 1 && s <= 3),
      `with Retry-After within the pause: ${seconds.join(' ')}`,
    )
    t.ok((seconds.at(0) ?? 0) >= (seconds.at(-1) ?? 0), 'counting down')
    t.equal(upstream.callsFor(PAUSED_MODEL), 1, 'and B made no call to the paused model')
    const other = await send(b, frank.secret)
    t.equal(other.status, 200, 'another model is served by B meanwhile: the pause is per model')

    await sleep(Math.max(0, pushedBackAt + 3_000 + 200 - performance.now()))
    const after = await send(b, frank.secret, { model: PAUSED_MODEL })
    t.equal(after.status, 200, 'after the 3 s B calls that model again')
    t.equal(upstream.callsFor(PAUSED_MODEL), 2)
  })

  await t.test('usage from both replicas sums exactly to what the upstream counted', async (t) => {
    const dave = await createKey(t, a, { name: 'dave' })
    const answers = await Promise.all(
      Array.from({ length: 24 }, (_, i) => send(i % 2 === 0 ? a : b, dave.secret, { stream: i % 3 === 0, content: `dave ${i}` })),
    )
    t.same(
      answers.map((answer) => answer.status),
      Array(24).fill(200),
    )
    const daveCalls = upstream.requests.flatMap((recorded, index) => (asked(recorded).content.startsWith('dave ') ? [index] : []))
    t.equal(daveCalls.length, 24)
    const daveTokens = daveCalls.map(tokensOfCall)
    const expected = {
      group: 'dave',
      requests: 24,
      errors: 0,
      promptTokens: sum(daveTokens.map((tokens) => tokens.prompt)),
      completionTokens: sum(daveTokens.map((tokens) => tokens.completion)),
    }
    let summary: Record<string, unknown> | undefined
    await until(
      async () => {
        const res = await adminRequest(b, 'GET', `/admin/usage?key=${dave.id}&by=key`)
        summary = (res.body.data as Array<Record<string, unknown>>)[0]
        return Number(summary?.requests ?? 0) >= 24
      },
      5_000,
      100,
    )
    await sleep(300) // three more flush intervals: nothing more arrives
    summary = ((await adminRequest(b, 'GET', `/admin/usage?key=${dave.id}&by=key`)).body.data as Array<Record<string, unknown>>)[0]
    t.match(summary, { ...expected, totalTokens: expected.promptTokens + expected.completionTokens }, 'GET /admin/usage on B')
    const rows = (await usageRows(db.rows)).filter((row) => row.keyId === dave.id)
    t.same(
      new Set(rows.map((row) => row.requestId)),
      new Set(answers.map((answer) => answer.requestId)),
      'one record per answer, by request id',
    )
    t.equal(
      count(rows, (row) => row.stream),
      8,
      'the streams among them',
    )
  })

  await t.test('every request this fleet got is one usage record; attempts and tokens sum to what the upstream counted', async (t) => {
    const settled = await until(async () => (await usageRows(db.rows)).length >= chats, 5_000, 100)
    t.ok(settled, 'all written')
    await sleep(300)
    const rows = await usageRows(db.rows)
    t.equal(rows.length, chats, `${chats} chat requests, ${rows.length} records`)
    t.equal(new Set(rows.map((row) => row.requestId)).size, rows.length, 'no record twice')
    t.equal(sum(rows.map((row) => row.attempts)), upstream.requests.length, `upstream calls: ${upstream.requests.length}`)
    t.equal(
      count(rows, (row) => row.status === 200),
      upstream.reported.length,
      'one 200 record per 200 the upstream sent',
    )
    t.equal(sum(rows.map((row) => row.promptTokens)), sum(upstream.reported.map((tokens) => tokens.prompt)), 'prompt tokens')
    t.equal(sum(rows.map((row) => row.completionTokens)), sum(upstream.reported.map((tokens) => tokens.completion)), 'completion tokens')
    t.equal(
      sum(rows.map((row) => row.totalTokens)),
      sum(upstream.reported.map((tokens) => tokens.prompt + tokens.completion)),
      'total tokens',
    )
  })
})

t.test(
  'Redis killed mid-run: both keep serving (limits per replica); shared limits are back once Redis returns',
  { skip: pgSkip },
  async (t) => {
    if (!needRedisServer(t)) return
    const db = await freshDatabase(t)
    const redis = await privateRedis(t)
    const upstream = await countingUpstream(t)
    const configPath = writeConfig(t, {
      team: { enabled: true, storeUrl: db.storeUrl, redisUrl: redis.url, redisKeyPrefix: prefixFor(t, redis.url), usageFlushMs: 100 },
    })
    const [a, b] = (await startReplicas(t, upstream.url, [
      { name: 'A', configPath },
      { name: 'B', configPath },
    ])) as [Replica, Replica]
    const alice = await createKey(t, a, { name: 'alice', rpm: 4 })
    const bob = await createKey(t, a, { name: 'bob' })
    const statuses = async (order: Replica[], secret: string) => {
      const seen: string[] = []
      for (const replica of order) {
        const answer = await ask(replica, secret)
        seen.push(`${replica.name} ${answer.status}${answer.code === undefined ? '' : ` ${answer.code}`}`)
      }
      return seen
    }
    const shared = async (label: string) => {
      const before = upstream.requests.length
      t.same(
        await statuses([a, b, a, b, a, b], alice.secret),
        ['A 200', 'B 200', 'A 200', 'B 200', 'A 429 key_rate_limit_exceeded', 'B 429 key_rate_limit_exceeded'],
        `${label}: rpm 4 counted across both replicas`,
      )
      t.equal(upstream.requests.length - before, 4)
    }
    const health = async (up: number, degraded: string[]) => {
      for (const replica of [a, b]) {
        t.equal(await metric(replica, 'toprouter_proxy_redis_up'), up, `${replica.name}: toprouter_proxy_redis_up ${up}`)
        const ready = await readyz(replica)
        t.equal(ready.status, 200, `${replica.name}: /readyz 200`)
        t.same(ready.body.degraded, degraded, `${replica.name}: /readyz degraded ${JSON.stringify(degraded)}`)
      }
    }

    await health(1, [])
    await shared('Redis up')

    const linesBeforeKill = new Map([a, b].map((replica) => [replica, logLines(replica).length]))
    await redis.kill()
    const down = await until(
      async () => (await metric(a, 'toprouter_proxy_redis_up')) === 0 && (await metric(b, 'toprouter_proxy_redis_up')) === 0,
      5_000,
    )
    t.ok(down, 'both replicas see Redis down')
    await health(0, ['redis'])
    const before = upstream.requests.length
    for (const replica of [a, b]) {
      t.same(
        await statuses([replica, replica, replica, replica, replica], alice.secret),
        [200, 200, 200, 200, '429 key_rate_limit_exceeded'].map((status) => `${replica.name} ${status}`),
        `Redis down: replica ${replica.name} keeps serving, counting rpm 4 on its own`,
      )
      t.same(await statuses([replica, replica], bob.secret), [`${replica.name} 200`, `${replica.name} 200`], `and serves bob (no limits)`)
    }
    t.equal(upstream.requests.length - before, 12, '4 + 2 calls per replica')
    for (const replica of [a, b]) t.equal(replica.child.exitCode, null, `replica ${replica.name} still running`)

    await redis.start()
    const back = await until(
      async () => (await metric(a, 'toprouter_proxy_redis_up')) === 1 && (await metric(b, 'toprouter_proxy_redis_up')) === 1,
      10_000,
    )
    t.ok(back, 'both replicas reconnected by themselves')
    await health(1, [])
    // The restarted Redis is empty: a new shared window, and shared it is.
    await shared('Redis back')
    for (const replica of [a, b]) {
      const lines = logLines(replica)
        .slice(linesBeforeKill.get(replica) ?? 0)
        .filter((line) => /^Redis limits store/.test(String(line.msg)))
        .map((line) => `${line.level} ${String(line.msg)}`)
      t.match(
        lines,
        [/^40 Redis limits store unreachable: limits are counted per replica/, /^30 Redis limits store reachable/],
        `${replica.name}: one warn line for the outage, one info line for the way back`,
      )
      t.equal(lines.length, 2, `${replica.name}: and no other`)
    }
  },
)

t.test(
  'PostgreSQL stopped mid-run: both keep serving cached keys; no usage record is lost once it returns',
  { skip: privatePostgresSkip },
  async (t) => {
    if (!(await needSharedRedis(t))) return
    const store = await privatePostgres(t)
    const rows = pgRows(store.url)
    const upstream = await countingUpstream(t)
    const configPath = writeConfig(t, {
      team: {
        enabled: true,
        storeUrl: store.url,
        storePoolSize: 2,
        redisUrl: SHARED_REDIS,
        redisKeyPrefix: prefixFor(t),
        keyCacheTtlMs: 600_000,
        usageFlushMs: 100,
      },
    })
    const [a, b] = (await startReplicas(t, upstream.url, [
      { name: 'A', configPath },
      { name: 'B', configPath },
    ])) as [Replica, Replica]
    const alice = await createKey(t, a, { name: 'alice' })
    const answers: Answer[] = []
    for (const replica of [a, b]) answers.push(await ask(replica, alice.secret)) // now cached on both
    t.ok(await until(async () => (await usageRows(rows)).length === 2, 5_000, 50), 'the first two records are written')

    store.stop()
    for (let i = 0; i < 6; i++) answers.push(await ask(i % 2 === 0 ? a : b, alice.secret, { stream: i % 3 === 0 }))
    t.same(
      answers.map((answer) => answer.status),
      Array(8).fill(200),
      'every request served, with PostgreSQL down for the last six',
    )
    for (const replica of [a, b]) {
      t.ok(
        await until(async () => (await metric(replica, 'toprouter_proxy_usage_store_up')) === 0, 5_000, 50),
        `${replica.name}: toprouter_proxy_usage_store_up 0`,
      )
      t.equal(await metric(replica, 'toprouter_proxy_usage_queue_records'), 3, `${replica.name}: its 3 records wait in memory`)
    }
    await sleep(500) // down a while longer: the writers retry, and fail, meanwhile

    store.start()
    const written = await until(async () => (await usageRows(rows).catch(() => [])).length >= 8, 15_000, 100)
    t.ok(written, 'written once PostgreSQL is back')
    await sleep(300)
    const seen = await usageRows(rows)
    t.equal(seen.length, 8, 'exactly one record per request: none lost, none twice')
    t.same(new Set(seen.map((row) => row.requestId)), new Set(answers.map((answer) => answer.requestId)), 'the records of these requests')
    t.equal(sum(seen.map((row) => row.totalTokens)), sum(upstream.reported.map((tokens) => tokens.prompt + tokens.completion)), 'tokens')
    for (const replica of [a, b]) {
      t.equal(await metric(replica, 'toprouter_proxy_usage_store_up'), 1, `${replica.name}: usage store up again`)
      t.equal(await metric(replica, 'toprouter_proxy_usage_queue_records'), 0, `${replica.name}: nothing waiting`)
      t.equal(await metric(replica, 'toprouter_proxy_usage_records_dropped'), 0, `${replica.name}: nothing dropped`)
    }
  },
)

t.test('SIGKILL of a replica loses at most usageFlushMs of usage; SIGTERM of the other loses none', { skip: pgSkip }, async (t) => {
  if (!(await needSharedRedis(t))) return
  const db = await freshDatabase(t)
  const redisKeyPrefix = prefixFor(t)
  const SLOW_MODEL = 'openai/gpt-5'
  const upstream = await countingUpstream(t, async (_res, request) => {
    if (request.model === SLOW_MODEL) await sleep(500)
    return false
  })
  const team = { enabled: true, storeUrl: db.storeUrl, redisUrl: SHARED_REDIS, redisKeyPrefix }
  // A flushes only at its drain (nothing in a minute otherwise); B every KILLED_FLUSH_MS.
  const configA = writeConfig(t, { team: { ...team, usageFlushMs: 60_000 } })
  const configB = writeConfig(t, { team: { ...team, usageFlushMs: KILLED_FLUSH_MS } })
  const [a, b] = (await startReplicas(t, upstream.url, [
    { name: 'A', configPath: configA },
    { name: 'B', configPath: configB },
  ])) as [Replica, Replica]
  const alice = await createKey(t, a, { name: 'alice' })
  const recordsOf = async (answers: readonly Answer[]) => {
    const ids = new Set(answers.map((answer) => answer.requestId))
    return (await usageRows(db.rows)).filter((row) => ids.has(row.requestId))
  }

  // B: five requests, then more than usageFlushMs (and a write) later five more, and SIGKILL at once.
  const early: Answer[] = []
  for (let i = 0; i < 5; i++) early.push(await ask(b, alice.secret))
  await sleep(KILLED_FLUSH_MS + WRITE_SLACK_MS)
  const late: Answer[] = []
  for (let i = 0; i < 5; i++) late.push(await ask(b, alice.secret, { stream: i % 2 === 0 }))
  b.child.kill('SIGKILL')
  const killedAt = performance.now()
  t.same((await b.exited).signal, 'SIGKILL')
  t.same(
    [...early, ...late].map((answer) => answer.status),
    Array(10).fill(200),
  )
  const olderThanFlush = [...early, ...late].filter((answer) => killedAt - answer.atMs > KILLED_FLUSH_MS + WRITE_SLACK_MS)
  t.ok(olderThanFlush.length >= 5, `${olderThanFlush.length} requests answered more than usageFlushMs before the kill`)
  const kept = await recordsOf([...early, ...late])
  const keptIds = new Set(kept.map((row) => row.requestId))
  t.same(
    olderThanFlush.filter((answer) => !keptIds.has(answer.requestId)).map((answer) => answer.requestId),
    [],
    'every request answered more than usageFlushMs before the SIGKILL is recorded',
  )
  t.equal(kept.length, keptIds.size, 'none twice')
  t.comment(
    `SIGKILL lost ${10 - kept.length} of 10 records; ${late.length} requests were answered in its last ${Math.round(killedAt - (late[0]?.atMs ?? killedAt))} ms`,
  )

  // A keeps serving; its records wait in memory (no flush for a minute) until SIGTERM drains them.
  const served: Answer[] = []
  for (let i = 0; i < 5; i++) served.push(await ask(a, alice.secret, { stream: i % 2 === 1 }))
  const slow = inFlight(ask(a, alice.secret, { model: SLOW_MODEL }))
  t.ok(await until(() => upstream.callsFor(SLOW_MODEL) === 1, 5_000), 'one request in flight on A')
  t.same(await recordsOf(served), [], "A's records are still pending")
  t.equal(await metric(a, 'toprouter_proxy_usage_queue_records'), 5, 'five waiting in A')
  a.child.kill('SIGTERM')
  served.push(await slow)
  t.same((await a.exited).code, 0, 'A drained and exited 0')
  t.same(
    served.map((answer) => answer.status),
    Array(6).fill(200),
    'the in-flight request was answered during the drain',
  )
  const drained = await recordsOf(served)
  t.same(new Set(drained.map((row) => row.requestId)), new Set(served.map((answer) => answer.requestId)), 'SIGTERM: every record written')
  t.equal(drained.length, 6, 'none twice')

  // What `toprouter-proxy usage` shows, with both replicas gone.
  const usage = (await cli(['usage', '--by', 'key'], configA)) as { data: Array<Record<string, unknown>> }
  t.match(usage.data, [{ group: 'alice', requests: 6 + kept.length, errors: 0 }], '`usage --json` counts what was kept')
})
