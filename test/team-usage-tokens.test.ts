import t from 'tap'
import { StreamUsageTap, usageOfBody, withUsageRequested } from '../src/team/usage-tokens.js'
import { chunkEvent, completion } from './helpers/fake-upstream.js'

/**
 * Token counts for usage records: from a JSON answer, or from a stream's usage chunk — which the
 * proxy asks for when the client did not, and then removes, so the client's bytes are unchanged.
 */

const MODEL = 'google/gemini-3.5-flash'
const usageEvent = (choices: unknown[] = []) =>
  `data: ${JSON.stringify({ id: 'gen-456', object: 'chat.completion.chunk', model: MODEL, choices, usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 } })}\n\n`
const CONTENT = [chunkEvent(MODEL, 0, 'Grüß '), chunkEvent(MODEL, 1, 'dich, 世界 '), chunkEvent(MODEL, 2, '🙂', 'stop')]
const DONE = 'data: [DONE]\n\n'
const USAGE = { promptTokens: 11, completionTokens: 7, totalTokens: 18 }

/** Feeds `stream` through a tap in the given pieces; returns what it forwarded and the usage it read. */
function tapped(stream: Buffer, cuts: number[], dropInjected: boolean) {
  const tap = new StreamUsageTap(dropInjected)
  const out: Buffer[] = []
  let from = 0
  for (const cut of [...cuts, stream.length]) {
    out.push(tap.push(stream.subarray(from, cut)))
    from = cut
  }
  out.push(tap.flush())
  return { out: Buffer.concat(out).toString('utf8'), usage: tap.usage }
}

/** Every split into two pieces, and one byte at a time. */
function splits(length: number): number[][] {
  return [...Array.from({ length: length - 1 }, (_, i) => [i + 1]), Array.from({ length: length - 1 }, (_, i) => i + 1)]
}

t.test('include_usage is asked for only when the client did not', async (t) => {
  const asked = (parsed: Record<string, unknown>, text = JSON.stringify(parsed)) => withUsageRequested({ body: Buffer.from(text), parsed })
  const spliced = asked({ model: MODEL, stream: true }, ' {"model": "m",\n "stream": true}')
  t.equal(
    spliced?.body.toString(),
    ' {"stream_options":{"include_usage":true},"model": "m",\n "stream": true}',
    "spliced in, the client's bytes kept",
  )
  t.same(JSON.parse(spliced?.body.toString() ?? ''), { stream_options: { include_usage: true }, model: 'm', stream: true }, 'still JSON')
  t.same(spliced?.parsed, { model: MODEL, stream: true, stream_options: { include_usage: true } }, 'the fields for fallbacks')
  const merged = asked({ model: MODEL, stream_options: { include_usage: false, other: 1 } })
  t.same(JSON.parse(merged?.body.toString() ?? '').stream_options, { include_usage: true, other: 1 }, 'other stream options kept')
  t.equal(asked({ model: MODEL, stream_options: { include_usage: true } }), undefined, 'the client asked itself: unchanged')
})

t.test('usage of a JSON answer', async (t) => {
  t.same(usageOfBody(Buffer.from(JSON.stringify(completion(MODEL)))), { promptTokens: 5, completionTokens: 2, totalTokens: 7 })
  t.same(
    usageOfBody(Buffer.from('{"usage":{"prompt_tokens":3,"completion_tokens":4}}')),
    { promptTokens: 3, completionTokens: 4, totalTokens: 7 },
    'total derived',
  )
  t.equal(usageOfBody(Buffer.from('{"choices":[]}')), undefined, 'none')
  t.equal(usageOfBody(Buffer.from('not json')), undefined)
  const details = {
    ...completion(MODEL),
    usage: { prompt_tokens: 9, completion_tokens: 1, total_tokens: 10, prompt_tokens_details: { cached_tokens: 4, x: '}{"' } },
  }
  t.same(
    usageOfBody(Buffer.from(JSON.stringify(details, null, 2))),
    { promptTokens: 9, completionTokens: 1, totalTokens: 10 },
    'nested objects, braces in strings, pretty-printed',
  )
  const first = {
    usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
    choices: [{ message: { content: 'the "usage": {"prompt_tokens": 99} field' } }],
  }
  t.same(
    usageOfBody(Buffer.from(JSON.stringify(first))),
    { promptTokens: 1, completionTokens: 2, totalTokens: 3 },
    'usage first, the word in the content',
  )
  t.same(
    usageOfBody(Buffer.from('{"usage" : {"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}}')),
    { promptTokens: 2, completionTokens: 2, totalTokens: 4 },
    'spaces around the colon',
  )
  t.equal(usageOfBody(Buffer.from('{"usage":null}')), undefined, 'null usage')
  t.equal(usageOfBody(Buffer.from('{"usage":{"prompt_tokens":2')), undefined, 'a truncated body')
})

t.test('the injected usage chunk is removed at every chunking, multi-byte text included; the usage is read', async (t) => {
  const withUsage = Buffer.from(CONTENT.join('') + usageEvent() + DONE)
  const expected = CONTENT.join('') + DONE
  let wrong = 0
  for (const cuts of splits(withUsage.length)) {
    const { out, usage } = tapped(withUsage, cuts, true)
    if (out !== expected || JSON.stringify(usage) !== JSON.stringify(USAGE)) wrong++
  }
  t.equal(wrong, 0, `all ${withUsage.length} chunkings give the client exactly the stream without the usage chunk`)
})

t.test('when the client asked for usage itself, every byte passes as it comes, and the usage is read', async (t) => {
  const withUsage = Buffer.from(CONTENT.join('') + usageEvent() + DONE)
  let wrong = 0
  for (const cuts of splits(withUsage.length)) {
    const { out, usage } = tapped(withUsage, cuts, false)
    if (out !== withUsage.toString('utf8') || JSON.stringify(usage) !== JSON.stringify(USAGE)) wrong++
  }
  t.equal(wrong, 0, 'byte-identical at every chunking')
})

t.test('usage on a chunk that also carries content is kept; CRLF events; nothing held when events align', async (t) => {
  const last = usageEvent([{ index: 0, delta: { content: '!' }, finish_reason: 'stop' }])
  const { out, usage } = tapped(Buffer.from(CONTENT.slice(0, 2).join('') + last + DONE), [], true)
  t.equal(out, CONTENT.slice(0, 2).join('') + last + DONE, 'a chunk with content is never removed')
  t.same(usage, USAGE)

  const crlf = (text: string) => text.replace(/\n\n$/, '\r\n\r\n')
  const crlfStream = [...CONTENT, usageEvent(), DONE].map(crlf)
  const tap = new StreamUsageTap(true)
  const forwarded = crlfStream.map((event) => tap.push(Buffer.from(event)).toString('utf8'))
  t.same(forwarded, [...crlfStream.slice(0, 3), '', crlfStream[4]], 'each event forwarded as it arrives; the usage one dropped')
  t.same(tap.usage, USAGE)
  t.equal(tap.flush().length, 0, 'nothing held back')
})

t.test('a cut stream: the held-back partial event is handed out at the end, usage unknown', async (t) => {
  const cut = `${CONTENT.join('')}data: {"id":"gen-456","choices":[{"delta":{"content":"par`
  const { out, usage } = tapped(Buffer.from(cut), [], true)
  t.equal(out, cut)
  t.equal(usage, undefined)
})
