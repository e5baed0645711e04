import { randomBytes } from 'node:crypto'
import pg from 'pg'
import type { Test } from 'tap'
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
    async rows(sql: string) {
      const client = new pg.Client({ connectionString: storeUrl })
      client.on('error', () => {})
      await client.connect()
      try {
        return (await client.query(sql)).rows as Array<Record<string, unknown>>
      } finally {
        await client.end()
      }
    },
  }
}
