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
    const data = parseEventData(event)
    if (!isRecord(data) || !Array.isArray(data.choices) || data.choices.length === 0) return false
    const [choice] = data.choices as unknown[]
    if (data.choices.length > 1 || !isRecord(choice) || (choice.index !== undefined && choice.index !== 0)) {
      this.plainText = false
      return false
    }
    if (choice.logprobs != null) this.plainText = false
    const delta = isRecord(choice.delta) ? choice.delta : {}
    if (delta.tool_calls != null || delta.function_call != null || delta.refusal != null) this.plainText = false
    const content = typeof delta.content === 'string' ? delta.content : ''
    if (this.awaitingRoleChunk) {
      if (content === '' && choice.finish_reason == null && this.plainText) return true
      this.awaitingRoleChunk = false
    }
    this.text += content
    return false
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}
