import type { ProxyError } from '../errors.js'
import { abortFailure, type Failure, failure, failureFrom, transportFailure } from '../failures.js'
import type { RequestSignal } from '../request-clock.js'
import { discardBody, type UpstreamResponse } from '../upstream/client.js'

/**
 * The stream contract. The commit point of a stream is its first `data:` event, not its headers,
 * so a stream that never starts can still be retried or failed over. After the commit the proxy
 * relays chunks as they arrive and makes sure the stream never ends in a silent lie: a cut or a
 * stall ends with one `data: {"error":…}` event, and a finished stream without `[DONE]` gets one.
 */

type Body = UpstreamResponse['body']

const DATA_FIELD = Buffer.from('data:')
/** An event ends with a blank line: `\n\n`, and with CRs `\r\n\r\n` or `\n\r\n`, hold one of these. */
const LF_LF = Buffer.from('\n\n')
const LF_CR_LF = Buffer.from('\n\r\n')
const DONE_EVENT = Buffer.from('data: [DONE]\n\n')
// At the start of a line only: inside a JSON string a newline is escaped, so a delta whose text
// mentions `data: [DONE]` cannot match. The relay's tail starts as '\n' for the stream's first line.
const DONE_TOKEN = Buffer.from('[DONE]')
const FINISH_KEY = Buffer.from('"finish_reason"')
/** Long enough to hold any marker that may straddle two chunks. */
const JUNCTION_BYTES = 48

export interface FirstEventOptions {
  /** The configured first-byte timeout, as the client will read it in the error message. */
  readonly firstByteTimeoutMs: number
  /** What is left of it after the response headers arrived. */
  readonly waitMs: number
  readonly signal: RequestSignal
}

/**
 * Waits for the first complete `data:` event (comments such as OpenRouter's keep-alives do not
 * count). Resolves with the chunks read so far and leaves the body paused, or with the failure
 * when the stream ends, breaks or stays silent too long (the body is then discarded).
 */
export function awaitFirstEvent(body: Body, options: FirstEventOptions): Promise<Buffer[] | Failure> {
  const { signal } = options
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    let length = 0
    const settle = (outcome: Buffer[] | Failure) => {
      clearTimeout(timer)
      body.off('data', onData)
      body.off('end', onEnd)
      body.off('error', onError)
      signal.off('abort', onAbort)
      if (Array.isArray(outcome)) {
        // Until the relay takes over, a reset must not surface as an uncaught 'error'; the relay
        // sees it through body.errored.
        body.on('error', ignoreError)
      } else {
        discardBody(body)
      }
      resolve(outcome)
    }
    const onData = (chunk: Buffer) => {
      chunks.push(chunk)
      length += chunk.length
      if (hasCompleteDataEvent(chunks.length === 1 ? chunk : Buffer.concat(chunks, length))) {
        body.pause()
        settle(chunks)
      }
    }
    const onEnd = () => settle(failure('reset', 'The upstream stream ended before its first event'))
    const onError = (error: unknown) =>
      settle(
        failureFrom(error, signal, {
          phase: 'first_event',
          connectTimeoutMs: 0,
          timeoutMs: options.firstByteTimeoutMs,
          bodyTimeoutMs: options.firstByteTimeoutMs,
        }),
      )
    const onAbort = () => settle(abortFailure(signal.reason ?? 'client_gone'))
    const timer = setTimeout(
      () => settle(failure('first_byte_timeout', `The upstream stream sent no event within ${Math.round(options.firstByteTimeoutMs)} ms`)),
      Math.max(1, options.waitMs),
    )
    body.on('data', onData)
    body.once('end', onEnd)
    body.once('error', onError)
    signal.once('abort', onAbort)
  })
}

function ignoreError(): void {}

/** True when the bytes hold a `data:` line (at the start of a line) and, after it, the blank line that ends its event. */
export function hasCompleteDataEvent(bytes: Buffer): boolean {
  let at = bytes.indexOf(DATA_FIELD)
  while (at > 0 && bytes[at - 1] !== 0x0a) at = bytes.indexOf(DATA_FIELD, at + 1)
  if (at === -1) return false
  const after = at + DATA_FIELD.length
  return bytes.indexOf(LF_LF, after) !== -1 || bytes.indexOf(LF_CR_LF, after) !== -1
}

export type StreamEnding = 'done' | 'done_added' | 'cut' | 'stalled' | 'client_gone' | 'drained'

/** Where a committed stream is written: the client's response (or, in tests, any Writable). */
export interface StreamDestination {
  write(chunk: Buffer): boolean
  end(chunk?: Buffer): unknown
  once(event: 'drain' | 'close', listener: () => void): unknown
  on(event: 'drain' | 'close', listener: () => void): unknown
  readonly writableEnded: boolean
}

/** A stream being relayed: how it ended, once it has; and a way to end it early (the drain). */
export interface RelayedStream {
  readonly ended: Promise<StreamEnding>
  /** The same, read synchronously: undefined while the stream runs. */
  readonly ending: StreamEnding | undefined
  /** Ends the stream now with this failure as its last event, unless it has already ended. */
  interrupt(failed: Failure): void
}

/**
 * Sees each chunk before the client does and decides what of it to forward now (team mode's
 * usage tap may hold back an incomplete event); `flush` gives what it still holds at the end.
 */
export interface ChunkTap {
  push(chunk: Buffer): Buffer
  flush(): Buffer
}

/**
 * What a stream cut or stalled after its commit may be continued with (stream continuation):
 * the next part, its first event read, or undefined for the error event.
 */
export type ResumeStream = (
  cut: Failure,
) => Promise<{ readonly response: { readonly body: Body }; readonly firstChunks: readonly Buffer[] | undefined } | undefined>

/**
 * Relays a committed stream: the chunks already read, then the rest of the body, written straight
 * to the destination with backpressure (pause on a full buffer, resume on drain) — no extra
 * stream in between — while the bytes are scanned for `finish_reason` and `[DONE]`. When the body
 * ends or fails, the ending is decided: nothing added after `[DONE]`, `[DONE]` added after a
 * finish, otherwise one error event — or, with `resume`, the next part relayed in its place.
 */
export function relayStream(
  body: Body,
  firstChunks: readonly Buffer[],
  destination: StreamDestination,
  idleTimeoutMs: number,
  tap?: ChunkTap,
  resume?: ResumeStream,
): RelayedStream {
  const relay = new SseRelay(destination, idleTimeoutMs, tap, resume)
  destination.on('drain', () => relay.drained())
  destination.once('close', () => relay.destinationClosed())
  relay.attach(body, firstChunks)
  return relay
}

const ENDING_OF_KIND: Readonly<Partial<Record<Failure['kind'], StreamEnding>>> = { stream_stalled: 'stalled', draining: 'drained' }

class SseRelay implements RelayedStream {
  readonly ended: Promise<StreamEnding>
  ending: StreamEnding | undefined = undefined
  private finished = false
  private sawDone = false
  isEnded = false
  waitingForDrain = false
  /** The last bytes of the previous chunk, kept only when it ended mid-line. */
  private tail: Buffer | undefined = undefined
  private atLineStart = true
  private tailStartsLine = false
  private body: Body | undefined = undefined
  private readonly destination: StreamDestination
  private readonly idleTimeoutMs: number
  private readonly tap: ChunkTap | undefined
  private readonly resume: ResumeStream | undefined
  private resolveEnded: (ending: StreamEnding) => void = ignoreError
  /** What was forwarded in this turn of the event loop and is not written yet. */
  private pending: Buffer[] = []
  private writeQueued = false
  private readonly writePendingNow = () => this.writePending()

  constructor(destination: StreamDestination, idleTimeoutMs: number, tap: ChunkTap | undefined, resume: ResumeStream | undefined) {
    this.destination = destination
    this.idleTimeoutMs = idleTimeoutMs
    this.tap = tap
    this.resume = resume
    this.ended = new Promise((resolve) => {
      this.resolveEnded = resolve
    })
  }

  /** Relays `body` from here on: the stream's first part, or a continuation in place of a cut one. */
  attach(body: Body, firstChunks: readonly Buffer[]): void {
    this.body = body
    // After commit the client's leaving is seen on the destination, so an error here is the upstream's.
    body.on('error', (error: unknown) => {
      if (body !== this.body) return
      const context = { phase: 'relay', connectTimeoutMs: 0, timeoutMs: this.idleTimeoutMs, bodyTimeoutMs: this.idleTimeoutMs } as const
      this.finish(transportFailure(error, context))
    })
    body.on('end', () => {
      if (body === this.body) this.finish(undefined)
    })
    for (const chunk of firstChunks) this.forward(chunk)
    // Without continuation a stream has one body, so its chunks need no check of which body they are from.
    if (this.resume === undefined) body.on('data', (chunk: Buffer) => this.forward(chunk))
    else
      body.on('data', (chunk: Buffer) => {
        if (body === this.body) this.forward(chunk)
      })
    if (body.errored) {
      this.finish(failure('stream_cut'))
    } else if (body.readableEnded) {
      // The whole body arrived with the first event and its 'end' has already been emitted.
      this.finish(undefined)
    } else if (!this.isEnded && !this.waitingForDrain) {
      // What arrived with the first event is read now, so that it leaves in the same write as the
      // first event; awaitFirstEvent left the body explicitly paused, which a new 'data' listener
      // does not undo.
      body.read()
      body.resume()
    }
  }

  forward(chunk: Buffer): void {
    if (this.isEnded) return
    // The markers are looked for in what the upstream sent; the client gets what the tap passes.
    if (!this.sawDone) this.scan(chunk)
    const forwarded = this.tap === undefined ? chunk : this.tap.push(chunk)
    if (forwarded.length === 0) return
    this.pending.push(forwarded)
    if (!this.writeQueued) {
      this.writeQueued = true
      queueMicrotask(this.writePendingNow)
    }
  }

  /**
   * One socket read brings several chunks at once, each its own 'data' event, and the body's
   * 'end' follows on the next tick. They are written together once those have run: one chunk
   * frame and one system call instead of one per chunk, and the last chunk leaves with the
   * response's end.
   */
  private writePending(): void {
    this.writeQueued = false
    if (this.isEnded || this.pending.length === 0) return
    if (!this.destination.write(this.takePending())) {
      this.waitingForDrain = true
      this.body?.pause()
    }
  }

  private takePending(): Buffer {
    const { pending } = this
    this.pending = []
    return pending.length === 1 ? (pending[0] as Buffer) : Buffer.concat(pending)
  }

  /** Ends the response with what is still pending, then `last`. */
  private endWithPending(last?: Buffer): void {
    if (last !== undefined) this.pending.push(last)
    if (this.pending.length === 0) this.destination.end()
    else this.destination.end(this.takePending())
  }

  drained(): void {
    this.waitingForDrain = false
    this.body?.resume()
  }

  /** The body ended (failure undefined) or failed; what the client gets last is decided here. */
  finish(failed: Failure | undefined): void {
    if (this.isEnded) return
    if (this.sawDone) {
      this.flushTap()
      this.report('done')
      this.endWithPending()
    } else if (this.finished) {
      // A finished stream whose [DONE] never came (or that was cut after its finish) is complete.
      this.flushTap()
      this.report('done_added')
      this.endWithPending(DONE_EVENT)
    } else if (this.resume !== undefined) {
      this.continueAfter(failed ?? failure('stream_cut'), this.resume)
    } else {
      this.endWith(failed ?? failure('stream_cut'))
    }
  }

  /**
   * A cut or stall with a way to continue: the cut part's socket is closed (a stalled one would
   * otherwise linger) and, while the next part is asked for, nothing is written; it is then relayed
   * from its first event, or the stream ends with this cut's error event.
   */
  private continueAfter(cut: Failure, resume: ResumeStream): void {
    this.writePending()
    if (this.body !== undefined) discardBody(this.body)
    this.body = undefined
    this.tail = undefined
    this.atLineStart = true
    resume(cut).then(
      (next) => {
        if (this.isEnded) {
          if (next !== undefined) discardBody(next.response.body)
        } else if (next === undefined) {
          this.endWith(cut)
        } else {
          this.attach(next.response.body, next.firstChunks ?? [])
        }
      },
      () => this.endWith(cut),
    )
  }

  private endWith(cut: Failure): void {
    if (this.isEnded) return
    this.flushTap()
    this.report(ENDING_OF_KIND[cut.kind] ?? 'cut')
    this.endWithPending(errorEvent(cut))
  }

  interrupt(failed: Failure): void {
    if (this.isEnded) return
    if (this.body !== undefined) discardBody(this.body)
    this.flushTap()
    this.report(ENDING_OF_KIND[failed.kind] ?? 'cut')
    this.endWithPending(errorEvent(failed))
  }

  private flushTap(): void {
    const held = this.tap?.flush()
    if (held !== undefined && held.length > 0) this.pending.push(held)
  }

  destinationClosed(): void {
    if (this.isEnded) return
    this.pending = []
    if (this.body !== undefined) discardBody(this.body)
    this.report('client_gone')
  }

  private report(ending: StreamEnding): void {
    this.isEnded = true
    this.ending = ending
    this.resolveEnded(ending)
  }

  /**
   * Upstream chunks nearly always end on an event boundary, so the usual chunk costs two
   * indexOf() calls and nothing else. Only when the previous chunk ended mid-line can a marker
   * straddle the boundary; then the previous chunk's last bytes and this one's first are joined.
   */
  private scan(chunk: Buffer): void {
    if (this.tail !== undefined) {
      const junction = Buffer.concat([this.tail, chunk.subarray(0, JUNCTION_BYTES)])
      if (this.scanRegion(junction, this.tailStartsLine)) return
    }
    const chunkStartsLine = this.atLineStart
    if (this.scanRegion(chunk, chunkStartsLine)) return
    this.atLineStart = chunk[chunk.length - 1] === 0x0a
    if (this.atLineStart) {
      this.tail = undefined
      return
    }
    const extendTail = this.tail !== undefined && chunk.length < JUNCTION_BYTES
    const joined = extendTail ? Buffer.concat([this.tail as Buffer, chunk]) : chunk
    const joinedStartsLine = extendTail ? this.tailStartsLine : chunkStartsLine
    this.tailStartsLine = joinedStartsLine && joined.length <= JUNCTION_BYTES
    this.tail = joined.subarray(Math.max(0, joined.length - JUNCTION_BYTES))
  }

  private scanRegion(region: Buffer, startsAtLineStart: boolean): boolean {
    if (!this.finished && hasFinishReason(region)) this.finished = true
    if (hasDoneEvent(region, startsAtLineStart)) {
      this.sawDone = true
      return true
    }
    return false
  }
}

/**
 * True when the bytes hold a `data: [DONE]` (or `data:[DONE]`) line. It must start a line: the
 * text `data: [DONE]` inside a reply is inside a JSON string, where a newline is always escaped.
 */
export function hasDoneEvent(bytes: Buffer, startsAtLineStart: boolean): boolean {
  for (let at = bytes.indexOf(DONE_TOKEN); at !== -1; at = bytes.indexOf(DONE_TOKEN, at + 1)) {
    let i = at - 1
    if (bytes[i] === 0x20) i-- // the optional space after the colon
    // "data:" ends at i
    if (i >= 4 && bytes[i] === 0x3a && bytes[i - 1] === 0x61 && bytes[i - 2] === 0x74 && bytes[i - 3] === 0x61 && bytes[i - 4] === 0x64) {
      const before = i - 5
      if (before < 0 ? startsAtLineStart : bytes[before] === 0x0a) return true
    }
  }
  return false
}

/** True when the bytes hold `"finish_reason"` followed by a string (not `null`). */
export function hasFinishReason(bytes: Buffer): boolean {
  for (let at = bytes.indexOf(FINISH_KEY); at !== -1; at = bytes.indexOf(FINISH_KEY, at + 1)) {
    let i = at + FINISH_KEY.length
    while (i < bytes.length && (bytes[i] === 0x20 || bytes[i] === 0x3a)) i++ // spaces and the colon
    if (bytes[i] === 0x22) return true // a string value such as "stop"
  }
  return false
}

export function errorEvent(error: ProxyError): Buffer {
  return Buffer.from(`data: ${JSON.stringify(error.toBody())}\n\n`)
}
