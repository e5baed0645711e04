import type { ChunkTap } from '../streaming/sse.js'
import { EMPTY, endsAnEvent, lastEventEnd, parseEventData } from '../streaming/sse-events.js'

/**
 * What the client of a continuable stream has been sent. Events are forwarded only once complete
 * (upstream chunks end on event boundaries, so in practice nothing waits), so the client always
 * holds whole events and a cut never leaves half of one for a continuation to follow. From each
 * event it keeps choice 0's `delta.content`, decoded by JSON.parse from the complete event's bytes
 * (so escapes and multi-byte characters split across chunks come out exact), and whether the
 * stream is still plain text: one choice, no tool or function calls, no refusal, no logprobs. In a
 * continuation part, the continuing model's leading role-only chunk is dropped.
 */

export class StreamTextTap implements ChunkTap {
  /** Choice 0's text as the client has received it. */
  text = ''
  /** False once anything but plain text content was sent: such a stream cannot be continued. */
  plainText = true
  private pending: Buffer | undefined = undefined
  private awaitingRoleChunk = false
  /** Team mode's usage tap sees the bytes first; this tap sees what it passes on. */
  private readonly inner: ChunkTap | undefined

  constructor(inner: ChunkTap | undefined) {
    this.inner = inner
  }

  push(chunk: Buffer): Buffer {
    const passed = this.inner === undefined ? chunk : this.inner.push(chunk)
    if (passed.length === 0) return EMPTY
    const bytes = this.pending === undefined ? passed : Buffer.concat([this.pending, passed])
    const completeLength = endsAnEvent(bytes) ? bytes.length : lastEventEnd(bytes)
    if (completeLength === -1) {
      this.pending = bytes
      return EMPTY
    }
    this.pending = completeLength < bytes.length ? bytes.subarray(completeLength) : undefined
    return this.read(completeLength === bytes.length ? bytes : bytes.subarray(0, completeLength))
  }

  /** The stream has ended: what is still held (an event without its blank line) goes out. */
  flush(): Buffer {
    const held = this.inner?.flush() ?? EMPTY
    const rest = this.pending
    this.pending = undefined
    if (rest === undefined) return held
    return held.length === 0 ? rest : Buffer.concat([rest, held])
  }

  /** The stream was cut and is being continued: half an event held back is dropped, never sent. */
  startContinuation(): void {
    this.inner?.flush()
    this.pending = undefined
    this.awaitingRoleChunk = true
  }

  private read(complete: Buffer): Buffer {
    // Scanned as a latin1 string: its indexes are byte offsets, and a string search costs a
    // fraction of a Buffer.indexOf call. Only a dropped event costs a copy of the chunk.
    const text = complete.toString('latin1')
    let kept: Buffer[] | undefined
    for (let start = 0; start < text.length; ) {
      const end = eventEndIn(text, start)
      const stop = end === -1 ? text.length : end
      if (this.readEvent(complete, text, start, stop)) kept ??= [complete.subarray(0, start)]
      else kept?.push(complete.subarray(start, stop))
      start = stop
    }
    return kept === undefined ? complete : Buffer.concat(kept)
  }

  /** Reads one event; true when it is a continuation's leading role-only chunk, to be dropped. */
  private readEvent(bytes: Buffer, text: string, start: number, stop: number): boolean {
    const read = scanEvent(bytes, text, start, stop) ?? parseEvent(bytes.subarray(start, stop))
    if (read === undefined) return false
    if (!read.plainText) this.plainText = false
    if (this.awaitingRoleChunk) {
      if (read.content === '' && !read.finished && this.plainText) return true
      this.awaitingRoleChunk = false
    }
    this.text += read.content
    return false
  }
}

/** What one event says: choice 0's text, whether it is still plain text, whether it finishes. */
interface EventRead {
  readonly content: string
  readonly plainText: boolean
  readonly finished: boolean
}

/** Where the event starting at `from` ends, its blank line included; -1 when it has not yet. */
function eventEndIn(text: string, from: number): number {
  const lf = text.indexOf('\n\n', from)
  const crlf = text.indexOf('\r\n\r\n', from)
  if (lf === -1) return crlf === -1 ? -1 : crlf + 4
  return crlf === -1 || lf < crlf ? lf + 2 : crlf + 4
}

/**
 * The usual chunk read without JSON.parse (which was most of what continuation cost a stream):
 * one choice of exactly the compact shape routers send, `"choices":[{"index":0,"delta":{` then
 * an optional `"role":"assistant",` and a `"content"` string or null, `}`, an optional
 * `"logprobs":null`, the `"finish_reason"`, `}]`. Because the whole choice is matched, nothing else
 * (a tool call, a refusal, logprobs, a second choice) can be in it. Inside a JSON string a quote
 * is always escaped, so the pattern cannot match there. Anything else is left to parseEvent:
 * undefined. Comparisons are made on the latin1 string, whose indexes are the bytes'.
 */
function scanEvent(bytes: Buffer, text: string, start: number, stop: number): EventRead | undefined {
  const at = text.indexOf(CHOICE_START, start)
  if (at === -1 || at >= stop) return undefined
  let i = at + CHOICE_START.length
  if (text.startsWith(ROLE, i)) {
    i += ROLE.length
    if (text.charCodeAt(i) === 0x2c) i++
  }
  let content = ''
  if (text.startsWith(CONTENT_KEY, i)) {
    i += CONTENT_KEY.length
    if (text.startsWith('null', i)) i += 4
    else {
      const end = stringEnd(text, i, stop)
      if (end === -1) return undefined
      // Decoded from the bytes as UTF-8 (the latin1 string only located it); escapes by JSON.parse.
      content = end.escaped ? (JSON.parse(bytes.toString('utf8', i, end.at + 1)) as string) : bytes.toString('utf8', i + 1, end.at)
      i = end.at + 1
    }
  }
  if (text.charCodeAt(i) !== 0x7d) return undefined // the delta's end
  i++
  if (text.startsWith(LOGPROBS_NULL, i)) i += LOGPROBS_NULL.length
  if (!text.startsWith(FINISH_KEY, i)) return undefined
  i += FINISH_KEY.length
  let finished = true
  if (text.startsWith('null', i)) {
    finished = false
    i += 4
  } else {
    const end = stringEnd(text, i, stop)
    if (end === -1) return undefined
    i = end.at + 1
  }
  if (!text.startsWith('}]', i)) return undefined
  return { content, plainText: true, finished }
}

const CHOICE_START = '"choices":[{"index":0,"delta":{'
const ROLE = '"role":"assistant"'
const CONTENT_KEY = '"content":'
const LOGPROBS_NULL = ',"logprobs":null'
const FINISH_KEY = ',"finish_reason":'

/** Where the JSON string starting at `from` (its opening quote) ends; -1 when not a string. */
function stringEnd(text: string, from: number, stop: number): { at: number; escaped: boolean } | -1 {
  if (text.charCodeAt(from) !== 0x22) return -1
  let escaped = false
  for (let i = from + 1; i < stop; i++) {
    const code = text.charCodeAt(i)
    if (code === 0x5c) {
      escaped = true
      i++ // the escaped character
    } else if (code === 0x22) return { at: i, escaped }
  }
  return -1
}

/** Any event, by JSON.parse: the exact rules. */
function parseEvent(event: Buffer): EventRead | undefined {
  const data = parseEventData(event)
  if (!isRecord(data) || !Array.isArray(data.choices) || data.choices.length === 0) return undefined
  const [choice] = data.choices as unknown[]
  if (data.choices.length > 1 || !isRecord(choice) || (choice.index !== undefined && choice.index !== 0)) {
    return { content: '', plainText: false, finished: false }
  }
  const delta = isRecord(choice.delta) ? choice.delta : {}
  const plainText = choice.logprobs == null && delta.tool_calls == null && delta.function_call == null && delta.refusal == null
  const content = typeof delta.content === 'string' ? delta.content : ''
  return { content, plainText, finished: choice.finish_reason != null }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}
