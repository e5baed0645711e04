import t from 'tap'
import { createUsageWriter, type UsageSink } from '../src/team/usage-writer.js'

/**
 * The batched usage writer against a sink that can be made to fail the way a store does (locked,
 * read-only): nothing is lost while it fails, one log line per transition, order kept on recovery.
 */

class FlakySink implements UsageSink<number> {
  readonly written: number[] = []
  writes = 0
  failing = false
  async write(records: readonly number[]): Promise<void> {
    this.writes++
    if (this.failing) throw Object.assign(new Error('SQLITE_BUSY: database is locked'), { code: 'SQLITE_BUSY' })
    this.written.push(...records)
  }
}

function logSink() {
  const lines: string[] = []
  return {
    lines,
    log: { warn: (_d: object, m: string) => lines.push(`warn ${m}`), info: (_d: object, m: string) => lines.push(`info ${m}`) },
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

t.test('records are written in batches on the timer, off the request path', async (t) => {
  const sink = new FlakySink()
  const { log } = logSink()
  const writer = createUsageWriter({ sink, flushMs: 30, maxQueued: 1000, batchSize: 4, log })
  t.teardown(() => writer.close())
  for (let i = 0; i < 10; i++) writer.record(i)
  t.equal(sink.writes, 0, 'recording does not write')
  await sleep(80)
  t.same(sink.written, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'all written, in order')
  t.equal(sink.writes, 3, 'in batches of 4')
  t.equal(writer.queued, 0)
})

t.test('a failing store: records wait, one line per transition, all written in order once it is back', async (t) => {
  const sink = new FlakySink()
  const { lines, log } = logSink()
  const writer = createUsageWriter({ sink, flushMs: 20, maxQueued: 1000, log })
  t.teardown(() => writer.close())
  sink.failing = true
  for (let i = 0; i < 5; i++) writer.record(i)
  await sleep(70)
  for (let i = 5; i < 8; i++) writer.record(i)
  await sleep(50)
  t.equal(writer.storeHealthy, false)
  t.equal(writer.queued, 8, 'nothing lost while it fails')
  t.same(lines, ['warn usage store unavailable; usage records wait in memory'], 'one line, however many failed flushes')
  sink.failing = false
  // Retries back off while the store fails (1, 2, 4, … up to 32 intervals apart), so recovery is
  // seen within 32 intervals.
  for (let waited = 0; sink.written.length === 0 && waited < 1000; waited += 20) await sleep(20)
  t.same(sink.written, [0, 1, 2, 3, 4, 5, 6, 7])
  t.same(lines.slice(1), ['info usage store is back; writing the waiting usage records'])
  t.equal(writer.storeHealthy, true)
})

t.test('bounded: past maxQueued the oldest go, and are counted', async (t) => {
  const sink = new FlakySink()
  sink.failing = true
  const writer = createUsageWriter({ sink, flushMs: 1000, maxQueued: 3, log: logSink().log })
  for (let i = 0; i < 5; i++) writer.record(i)
  t.equal(writer.queued, 3)
  t.equal(writer.dropped, 2)
  sink.failing = false
  t.equal(await writer.close(), true, 'the drain flushes')
  t.same(sink.written, [2, 3, 4])
})

t.test('a failing store is retried less and less often', async (t) => {
  const sink = new FlakySink()
  const writer = createUsageWriter({ sink, flushMs: 10, maxQueued: 1000, log: logSink().log })
  t.teardown(() => writer.close())
  sink.failing = true
  writer.record(1)
  await sleep(1000)
  // About 100 intervals: with 1, 2, 4, 8, 16, 32 … between attempts, about 8 attempts.
  t.ok(sink.writes >= 4 && sink.writes <= 12, `${sink.writes} attempts in ~100 intervals`)
  t.equal(await writer.flush(), false, 'an explicit flush still tries at once')
  sink.failing = false
  t.equal(await writer.flush(), true)
})

t.test('close flushes what is left, and says when it could not', async (t) => {
  const sink = new FlakySink()
  const writer = createUsageWriter({ sink, flushMs: 60_000, maxQueued: 10, log: logSink().log })
  writer.record(1)
  t.equal(await writer.close(), true)
  t.same(sink.written, [1], 'written at close, not waiting for the timer')
  const failing = new FlakySink()
  failing.failing = true
  const stuck = createUsageWriter({ sink: failing, flushMs: 60_000, maxQueued: 10, log: logSink().log })
  stuck.record(1)
  t.equal(await stuck.close(), false, 'a store still down at close: reported, the record still queued')
  t.equal(stuck.queued, 1)
})
