import t from 'tap'
import { request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import { completion, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { privatePostgres, privatePostgresSkip as skip } from './helpers/postgres.js'
import { GATEWAY_KEY, startProxy } from './helpers/proxy.js'

/**
 * PostgreSQL stopped mid-run, on a private throwaway cluster (initdb + pg_ctl on a free port, run as
 * the postgres system user since PostgreSQL refuses root), so the shared server is never touched:
 * a cached key keeps being served, an uncached one gets 503 (not 401), usage waits in memory and is
 * written once the server is back.
 */

const MODEL = 'google/gemini-3.5-flash'
function chat(url: string, secret: string) {
  return request(`${url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] }),
  })
}

t.test('PostgreSQL stopped mid-run: cached keys served, unknown keys 503, usage kept and written when it returns', { skip }, async (t) => {
  const pg = await privatePostgres(t)
  const upstream = await startFakeUpstream(t, (_req, res) =>
    sendJson(res, 200, { ...completion(MODEL), usage: { prompt_tokens: 20, completion_tokens: 40, total_tokens: 60 } }),
  )
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    env: { TOPROUTER_API_KEY: GATEWAY_KEY },
    config: { team: { enabled: true, storeUrl: pg.url, storePoolSize: 2, usageFlushMs: 50, keyCacheTtlMs: 600000 } },
  })
  const team = proxy.team
  if (team === undefined) throw new Error('team mode did not open')
  t.teardown(() => team.close().catch(() => {}))
  const cached = await team.service.keys.createKey({ name: 'cached' })
  const uncached = await team.service.keys.createKey({ name: 'uncached' })
  const first = await chat(proxy.url, cached.secret)
  t.equal(first.statusCode, 200)
  await first.body.text()
  t.equal(await team.flushUsage(), true)

  pg.stop()
  const served = await chat(proxy.url, cached.secret)
  t.equal(served.statusCode, 200, 'a cached key is served with the store down')
  await served.body.text()
  await expectErrorShape(t, await chat(proxy.url, uncached.secret), { status: 503, code: 'service_unavailable' })
  t.equal(await team.flushUsage(), false, 'the usage record waits in memory')

  pg.start()
  let written = false
  for (let attempt = 0; attempt < 50 && !written; attempt++) {
    written = await team.flushUsage()
    if (!written) await sleep(100)
  }
  t.equal(written, true, 'written once PostgreSQL is back')
  const rows = await team.service.store.usage.listUsage(cached.record.id)
  t.equal(rows.length, 2, 'both requests of the cached key are recorded: none lost')
  const back = await chat(proxy.url, uncached.secret)
  t.equal(back.statusCode, 200, 'the key not in the cache works again')
  await back.body.text()
  t.equal(upstream.requests.length, 3)
})
