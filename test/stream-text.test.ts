import t from 'tap'
import { StreamTextTap } from '../src/continuation/stream-text.js'

/**
 * The continuation's text tap on its own: what it keeps of each event (choice 0's text, exactly),
 * when it declares a stream not plain text, and that it forwards whole events only. Each case is
 * read both ways the tap can (its byte scan, and JSON.parse for anything the scan is unsure of),
 * so the two must agree.
 */

const event = (choice: object, extra: object = {}) =>
  `data: ${JSON.stringify({ id: 'gen-1', object: 'chat.completion.chunk', model: 'm', choices: [choice], ...extra })}\n\n`

const cases: Array<{ name: string; events: string[]; text: string; plain: boolean }> = [
  {
    name: 'plain deltas',
    events: [event({ index: 0, delta: { content: 'Hel' } }), event({ index: 0, delta: { content: 'lo' } })],
    text: 'Hello',
    plain: true,
  },
  {
    name: 'escapes: quotes, backslashes, newlines, \\u escapes, an emoji as a surrogate pair',
    events: ['data: {"choices":[{"index":0,"delta":{"content":"a \\"q\\" \\\\ \\n \\u00e9 \\ud83e\\udd8a"},"finish_reason":null}]}\n\n'],
    text: 'a "q" \\ \n é 🦊',
    plain: true,
  },
  {
    name: 'content null and a role chunk',
    events: [event({ index: 0, delta: { role: 'assistant', content: null } })],
    text: '',
    plain: true,
  },
  {
    name: 'OpenAI-style refusal: null is harmless',
    events: [event({ index: 0, delta: { content: 'ok', refusal: null } })],
    text: 'ok',
    plain: true,
  },
  { name: 'a refusal', events: [event({ index: 0, delta: { refusal: 'no' } })], text: '', plain: false },
  {
    name: 'tool calls',
    events: [event({ index: 0, delta: { tool_calls: [{ index: 0, id: 'c', type: 'function', function: { name: 'f', arguments: '' } }] } })],
    text: '',
    plain: false,
  },
  { name: 'a second choice', events: [event({ index: 1, delta: { content: 'x' } })], text: '', plain: false },
  { name: 'logprobs', events: [event({ index: 0, delta: { content: 'x' }, logprobs: { content: [] } })], text: 'x', plain: false },
  { name: 'logprobs: null', events: [event({ index: 0, delta: { content: 'x' }, logprobs: null })], text: 'x', plain: true },
  {
    name: 'a usage chunk (choices: []) adds nothing',
    events: [event({ index: 0, delta: { content: 'x' } }), 'data: {"choices":[],"usage":{"total_tokens":3}}\n\n'],
    text: 'x',
    plain: true,
  },
  {
    name: 'spaced JSON (the parser reads it)',
    events: ['data: { "choices": [ { "index": 0, "delta": { "content": "sp" } } ] }\n\n'],
    text: 'sp',
    plain: true,
  },
  {
    name: 'text that mentions "tool_calls" is still text',
    events: [event({ index: 0, delta: { content: 'use "tool_calls" here' } })],
    text: 'use "tool_calls" here',
    plain: true,
  },
  {
    name: '[DONE] and comments',
    events: [': keep-alive\n\n', event({ index: 0, delta: { content: 'y' } }), 'data: [DONE]\n\n'],
    text: 'y',
    plain: true,
  },
]

for (const { name, events, text, plain } of cases) {
  t.test(name, async (t) => {
    const tap = new StreamTextTap(undefined)
    const forwarded = events.map((e) => tap.push(Buffer.from(e)).toString()).join('')
    t.equal(tap.text, text)
    t.equal(tap.plainText, plain)
    t.equal(forwarded, events.join(''), 'whole events are forwarded as they came')
  })
}

t.test('an event split across chunks (inside a multi-byte character) is held until whole', async (t) => {
  const tap = new StreamTextTap(undefined)
  const bytes = Buffer.from(event({ index: 0, delta: { content: 'dög 🦊' } }))
  const cut = bytes.indexOf(Buffer.from('🦊')) + 2
  t.equal(tap.push(bytes.subarray(0, cut)).length, 0, 'nothing forwarded yet')
  t.equal(tap.text, '')
  t.same(tap.push(bytes.subarray(cut)), bytes, 'the whole event, once complete')
  t.equal(tap.text, 'dög 🦊')
})

t.test('a continuation part: half an event held at the cut is dropped; the role chunk is dropped', async (t) => {
  const tap = new StreamTextTap(undefined)
  tap.push(Buffer.from(event({ index: 0, delta: { content: 'The ' } })))
  tap.push(Buffer.from(event({ index: 0, delta: { content: 'quick' } })).subarray(0, 20))
  tap.startContinuation()
  const role = event({ index: 0, delta: { role: 'assistant', content: '' } })
  const next = event({ index: 0, delta: { content: 'quick' } })
  t.equal(tap.push(Buffer.from(role + next)).toString(), next, 'the role chunk is not forwarded')
  t.equal(tap.text, 'The quick')
  t.equal(tap.flush().length, 0, 'nothing left over from the cut part')
})
