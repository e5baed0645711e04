import { readFileSync } from 'node:fs'
import t from 'tap'
import { ERROR_REGISTRY, typeForStatus } from '../src/errors.js'
import { defaultCodeForStatus } from '../src/upstream/normalize.js'

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')

function tableRows(marker: string): string[][] {
  const start = readme.indexOf(`<!-- ${marker}:start -->`)
  const end = readme.indexOf(`<!-- ${marker}:end -->`)
  if (start === -1 || end === -1) throw new Error(`README has no ${marker} table`)
  return readme
    .slice(start, end)
    .split('\n')
    .filter((line) => /^\|\s*\d{3}\s*\|/.test(line))
    .map((line) =>
      line
        .split('|')
        .slice(1, -1)
        .map((cell) => cell.trim().replace(/`/g, '')),
    )
}

t.test("the README's table of proxy errors and the registry agree, both ways", async (t) => {
  const documented = new Map(tableRows('error-registry').map(([status, type, code]) => [code ?? '', { status: Number(status), type }]))
  const registered = new Map(Object.entries(ERROR_REGISTRY).map(([code, entry]) => [code, { status: entry.status, type: entry.type }]))
  t.same([...documented.keys()].sort(), [...registered.keys()].sort(), 'the same codes')
  for (const [code, entry] of registered) t.same(documented.get(code), entry, `${code}: same status and type`)
})

t.test("the README's upstream defaults table and the normaliser agree, both ways", async (t) => {
  const rows = tableRows('upstream-defaults')
  t.ok(rows.length >= 10)
  for (const [status, type, code] of rows) {
    t.equal(typeForStatus(Number(status)), type, `${status}: type`)
    t.equal(defaultCodeForStatus(Number(status)), code, `${status}: default code`)
  }
  for (const status of [400, 401, 402, 403, 404, 408, 413, 422, 429, 500, 502, 503, 504]) {
    t.ok(
      rows.some(([documented]) => Number(documented) === status),
      `${status} is documented`,
    )
  }
})

t.test('every registry entry is a complete, consistent error', async (t) => {
  for (const [code, entry] of Object.entries(ERROR_REGISTRY)) {
    t.match(code, /^[a-z_]+$/)
    t.ok(entry.status >= 400 && entry.status <= 599, `${code}: an error status`)
    t.equal(entry.type, typeForStatus(entry.status), `${code}: type follows the status table`)
    t.ok(entry.message.length > 0)
  }
})

t.test("the README's team refusal table names registry codes with their statuses", async (t) => {
  const start = readme.indexOf('<!-- team-refusals:start -->')
  const end = readme.indexOf('<!-- team-refusals:end -->')
  t.ok(start !== -1 && end > start, 'the table is marked')
  const rows = readme
    .slice(start, end)
    .split('\n')
    .filter((line) => /^\|[^|]+\|\s*\d{3}\s*\|/.test(line))
  t.equal(rows.length, 6, 'six refusals')
  for (const row of rows) {
    const [, status, codes] = row
      .split('|')
      .slice(1, -1)
      .map((cell) => cell.trim())
    const named = [...(codes ?? '').matchAll(/`([a-z_]+)`/g)].map((match) => match[1] as keyof typeof ERROR_REGISTRY)
    t.ok(named.length > 0, `${row.slice(0, 40)}… names a code`)
    for (const code of named) t.equal(ERROR_REGISTRY[code]?.status, Number(status), `${code} is ${status} in the registry`)
  }
})
