import t from 'tap'
import { costUsd, periodStartMs, priceOf, pricesFromModelList } from '../src/team/cost.js'

t.test('cost: configured prices win, then the model list; unknown is null, never free', async (t) => {
  const configured = { 'google/gemini-3.5-flash': { inputPerMTok: 0.3, outputPerMTok: 2.5 } }
  const listed = pricesFromModelList(
    Buffer.from(
      JSON.stringify({
        data: [
          { id: 'google/gemini-3.5-flash', pricing: { prompt: '0.000001', completion: '0.000002' } },
          { id: 'anthropic/claude-4.6-sonnet', pricing: { prompt: '0.000003', completion: 0.000015 } },
          { id: 'free/model', pricing: { prompt: '0', completion: '0' } },
          { id: 'odd/model', pricing: { prompt: 'n/a', completion: '1' } },
          { id: 'bare/model' },
        ],
      }),
    ),
  )
  t.same([...listed.keys()], ['google/gemini-3.5-flash', 'anthropic/claude-4.6-sonnet', 'free/model'], 'only usable prices are kept')
  const usage = { promptTokens: 1_000_000, completionTokens: 200_000, totalTokens: 1_200_000 }
  t.equal(costUsd(usage, priceOf('google/gemini-3.5-flash', configured, listed)), 0.3 + 0.5, 'the configured price')
  t.equal(
    costUsd(usage, priceOf('anthropic/claude-4.6-sonnet', configured, listed))?.toFixed(6),
    (3 + 3).toFixed(6),
    'the list’s per-token price',
  )
  t.equal(costUsd(usage, priceOf('free/model', configured, listed)), 0, 'a listed price of 0 is free')
  t.equal(costUsd(usage, priceOf('bare/model', configured, listed)), null, 'no price: unknown')
  t.equal(
    costUsd({ promptTokens: null, completionTokens: null, totalTokens: null }, configured['google/gemini-3.5-flash']),
    null,
    'no tokens: unknown',
  )
  t.equal(costUsd(undefined, configured['google/gemini-3.5-flash']), null)
  t.equal(pricesFromModelList(Buffer.from('<html>')).size, 0)
})

t.test('budget periods start at UTC midnight, Monday, the 1st, or never', async (t) => {
  const at = Date.UTC(2026, 11, 3, 17, 45) // Thursday 3 December 2026, 17:45 UTC
  t.equal(new Date(periodStartMs('day', at)).toISOString(), '2026-12-03T00:00:00.000Z')
  t.equal(new Date(periodStartMs('week', at)).toISOString(), '2026-11-30T00:00:00.000Z', 'the Monday before, across a month')
  t.equal(
    new Date(periodStartMs('week', Date.UTC(2026, 10, 30, 0, 0))).toISOString(),
    '2026-11-30T00:00:00.000Z',
    'a Monday is its own start',
  )
  t.equal(
    new Date(periodStartMs('week', Date.UTC(2026, 11, 6, 23, 59))).toISOString(),
    '2026-11-30T00:00:00.000Z',
    'Sunday belongs to the week before',
  )
  t.equal(new Date(periodStartMs('month', at)).toISOString(), '2026-12-01T00:00:00.000Z')
  t.equal(periodStartMs('total', at), 0)
})
