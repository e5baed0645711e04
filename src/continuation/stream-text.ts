import type { ChunkTap } from '../streaming/sse.js'
import { EMPTY, endsAnEvent, lastEventEnd, nextEventEnd, parseEventData } from '../streaming/sse-events.js'

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
    // Only a dropped event costs a copy; the usual chunk is forwarded as it came.
    let kept: Buffer[] | undefined
    for (let start = 0; start < complete.length; ) {
      const end = nextEventEnd(complete, start)
      const stop = end === -1 ? complete.length : end
      const event = complete.subarray(start, stop)
      if (this.readEvent(event)) kept ??= [complete.subarray(0, start)]
      else kept?.push(event)
      start = stop
    }
    return kept === undefined ? complete : Buffer.concat(kept)
  }

  /** Reads one event; true when it is a continuation's leading role-only chunk, to be dropped. */
  private readEvent(event: Buffer): boolean {
    const read = scanEvent(event) ?? parseEvent(event)
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

const NOT_PLAIN_KEYS = ['"tool_calls"', '"function_call"', '"refusal"'].map((key) => Buffer.from(key))
const CONTENT_KEY = Buffer.from('"content":')
const INDEX_KEY = Buffer.from('"index":')
const LOGPROBS_KEY = Buffer.from('"logprobs":')
const FINISH_KEY = Buffer.from('"finish_reason":')
const NULL = Buffer.from('null')
const NO_CHOICES = Buffer.from('"choices":[]')

/**
 * The usual chunk read by a bounded scan instead of JSON.parse (which was most of what continuation
 * cost a stream): the compact `{"choices":[{"index":0,"delta":{"content":"…"},…}]}` that routers
 * send. Inside a JSON string a quote is always escaped, so a key found with its quotes is a key.
 * Anything it is not sure of (a key it does not know to be harmless, an unusual spacing, two
 * `content` keys) is left to parseEvent: undefined.
 */
function scanEvent(event: Buffer): EventRead | undefined {
  if (event.indexOf(NO_CHOICES) !== -1) return undefined
  for (const key of NOT_PLAIN_KEYS) {
    const at = event.indexOf(key)
    if (at !== -1 && !isNullAt(event, at + key.length + 1)) return undefined
  }
  for (let at = event.indexOf(INDEX_KEY); at !== -1; at = event.indexOf(INDEX_KEY, at + 1)) {
    if (event[at + INDEX_KEY.length] !== 0x30 || !isEndOfValue(event[at + INDEX_KEY.length + 1])) return undefined
  }
  const logprobs = event.indexOf(LOGPROBS_KEY)
  if (logprobs !== -1 && !isNullAt(event, logprobs + LOGPROBS_KEY.length)) return undefined
  const finishAt = event.indexOf(FINISH_KEY)
  const finished = finishAt !== -1 && !isNullAt(event, finishAt + FINISH_KEY.length)
  const contentAt = event.indexOf(CONTENT_KEY)
  if (contentAt === -1) return { content: '', plainText: true, finished }
  if (event.indexOf(CONTENT_KEY, contentAt + 1) !== -1) return undefined
  const start = contentAt + CONTENT_KEY.length
  if (isNullAt(event, start)) return { content: '', plainText: true, finished }
  if (event[start] !== 0x22) return undefined
  let escaped = false
  for (let i = start + 1; i < event.length; i++) {
    const byte = event[i]
    if (byte === 0x5c) {
      escaped = true
      i++ // the escaped character
    } else if (byte === 0x22) {
      const content = escaped ? (JSON.parse(event.toString('utf8', start, i + 1)) as string) : event.toString('utf8', start + 1, i)
      return { content, plainText: true, finished }
    }
  }
  return undefined
}

function isNullAt(bytes: Buffer, at: number): boolean {
  return bytes.compare(NULL, 0, NULL.length, at, at + NULL.length) === 0
}

function isEndOfValue(byte: number | undefined): boolean {
  return byte === 0x2c || byte === 0x7d
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
