import t from 'tap'
import { createKeyCache } from '../src/team/key-cache.js'

t.test('a key lookup is served from memory for ttlMs, shared while loading, dropped on forget', async (t) => {
  let nowMs = 0
  const cache = createKeyCache<{ id: string; name: string }>({ ttlMs: 5000, now: () => nowMs })
  let loads = 0
  const load = async () => {
    loads++
    await new Promise((resolve) => setTimeout(resolve, 10))
    return { id: 'key_1', name: 'alice' }
  }
  const together = await Promise.all([cache.lookup('h1', load), cache.lookup('h1', load), cache.lookup('h1', load)])
  t.equal(loads, 1, 'three concurrent lookups, one store query')
  t.same(
    together.map((k) => k?.name),
    ['alice', 'alice', 'alice'],
  )
  nowMs = 4999
  await cache.lookup('h1', load)
  t.equal(loads, 1, 'fresh until ttlMs')
  nowMs = 5000
  await cache.lookup('h1', load)
  t.equal(loads, 2, 'read again after ttlMs')
  cache.forget('key_1')
  await cache.lookup('h1', load)
  t.equal(loads, 3, 'an update or revocation is seen by the next request')
})

t.test('a miss is cached too, and a failed load is not', async (t) => {
  const cache = createKeyCache<{ id: string }>({ ttlMs: 5000, now: () => 0 })
  let loads = 0
  for (let i = 0; i < 5; i++) {
    await cache.lookup('wrong', async () => {
      loads++
      return undefined
    })
  }
  t.equal(loads, 1, 'a wrong key costs one store query, not one per request')
  await t.rejects(cache.lookup('h2', () => Promise.reject(new Error('store down'))))
  t.equal(await cache.lookup('h2', async () => ({ id: 'key_2' })).then((k) => k?.id), 'key_2', 'the failure was not remembered')
})

t.test('bounded: the oldest entries go first', async (t) => {
  const cache = createKeyCache<{ id: string }>({ ttlMs: 5000, maxEntries: 3, now: () => 0 })
  for (let i = 0; i < 5; i++) await cache.lookup(`h${i}`, async () => ({ id: `key_${i}` }))
  t.equal(cache.size, 3)
  let reloaded = false
  await cache.lookup('h0', async () => {
    reloaded = true
    return { id: 'key_0' }
  })
  t.ok(reloaded, 'the oldest was evicted')
})
