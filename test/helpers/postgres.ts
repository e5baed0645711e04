import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import type { Test } from 'tap'
import { freePort } from './free-port.js'
import type { StoreFixture } from './team-store-cases.js'

/**
 * The PostgreSQL every machine of this project runs (127.0.0.1:5432, user postgres, trust auth), and
 * a database of its own per test, so test files can run in parallel.
 */

export const PG_HOST = '127.0.0.1'
export const PG_PORT = 5432
const PG_ADMIN_URL = `postgres://postgres@${PG_HOST}:${PG_PORT}/postgres`

export async function postgresReachable(): Promise<boolean> {
  const client = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 2000 })
  client.on('error', () => {})
  try {
    await client.connect()
    await client.query('select 1')
    return true
  } catch {
    return false
  } finally {
    await client.end().catch(() => {})
  }
}

/**
 * The tap option that skips the PostgreSQL tests: outside CI when the server is not there, with a
 * message naming it. In CI (env CI set) they never skip: an absent server fails them.
 */
export async function postgresSkip(t: Test): Promise<string | false> {
  if (await postgresReachable()) return false
  const message = `PostgreSQL not reachable at ${PG_HOST}:${PG_PORT}`
  if (process.env.CI !== undefined && process.env.CI !== '') {
    t.fail(`${message}, and CI is set: the PostgreSQL tests must run in CI`)
    return false
  }
  return message
}

async function admin<T>(run: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: PG_ADMIN_URL })
  client.on('error', () => {})
  await client.connect()
  try {
    return await run(client)
  } finally {
    await client.end()
  }
}

/** A fresh database with a random name, dropped in t's teardown (its leftover connections ended first). */
export async function freshDatabase(t: Test): Promise<StoreFixture & { readonly name: string }> {
  const name = `toprouter_test_${randomBytes(6).toString('hex')}`
  await admin((client) => client.query(`create database ${name}`))
  const storeUrl = `postgres://postgres@${PG_HOST}:${PG_PORT}/${name}`
  t.teardown(() =>
    admin(async (client) => {
      await client.query('select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()', [name])
      await client.query(`drop database if exists ${name}`)
    }),
  )
  return {
    name,
    storeUrl,
    rows: pgRows(storeUrl),
  }
}

/** The directory of the PostgreSQL server binaries (initdb, pg_ctl), for {@link privatePostgres}. */
const binDir = existsSync('/usr/lib/postgresql')
  ? readdirSync('/usr/lib/postgresql')
      .map((version) => join('/usr/lib/postgresql', version, 'bin'))
      .find((dir) => existsSync(join(dir, 'initdb')))
  : undefined
const BINARIES_MISSING = 'PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql'

/**
 * The tap `skip` option of the tests that start a private cluster: outside CI when the server
 * binaries are missing, with a message naming them. In CI it is false: privatePostgres then fails.
 */
export const privatePostgresSkip: string | false =
  binDir === undefined && (process.env.CI === undefined || process.env.CI === '') ? BINARIES_MISSING : false

export interface PrivatePostgres {
  /** Its `postgres` database. */
  readonly url: string
  /** Starts it again (waits until it accepts connections). */
  start(): void
  /** Stops it at once (`-m immediate`: open connections are cut, as in a crash). */
  stop(): void
}

/**
 * A PostgreSQL cluster of this test's own (initdb + pg_ctl on a free port, run as the postgres
 * system user when the test runs as root, since PostgreSQL refuses root), to stop and start
 * mid-test without touching the shared server; stopped and removed after the test.
 */
export async function privatePostgres(t: Test): Promise<PrivatePostgres> {
  const bin = binDir
  if (bin === undefined) throw new Error(BINARIES_MISSING)
  const dir = mkdtempSync(join(tmpdir(), 'toprouter-pg-'))
  const asRoot = process.getuid?.() === 0
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }))
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }))
    chownSync(dir, uid, gid)
  }
  const run = (tool: string, args: string[]) =>
    asRoot
      ? execFileSync('runuser', ['-u', 'postgres', '--', join(bin, tool), ...args], { stdio: 'pipe' })
      : execFileSync(join(bin, tool), args, { stdio: 'pipe' })
  const data = join(dir, 'data')
  const port = await freePort()
  run('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync'])
  const start = () => {
    run('pg_ctl', [
      '-D',
      data,
      '-w',
      '-l',
      join(dir, 'log'),
      '-o',
      `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`,
      'start',
    ])
  }
  const stop = () => {
    run('pg_ctl', ['-D', data, '-w', '-m', 'immediate', 'stop'])
  }
  start()
  t.teardown(() => {
    try {
      stop()
    } catch {
      // already stopped
    }
    rmSync(dir, { recursive: true, force: true })
  })
  return { url: `postgres://postgres@127.0.0.1:${port}/postgres`, start, stop }
}

export type Rows = (sql: string) => Promise<Array<Record<string, unknown>>>

/** Runs a query on its own connection (opened and closed per call) and gives its rows. */
export function pgRows(url: string): Rows {
  return async (sql) => {
    const client = new pg.Client({ connectionString: url })
    client.on('error', () => {})
    await client.connect()
    try {
      return (await client.query(sql)).rows as Array<Record<string, unknown>>
    } finally {
      await client.end()
    }
  }
}
