/**
 * Where a request's token counts come from: the `usage` of a JSON answer, or, for a stream, its
 * usage chunk. A stream only carries one when `stream_options.include_usage` is set, so in team mode
 * the proxy asks for it when the client did not — and then removes that extra chunk from what the
 * client receives, so the client's bytes are exactly what it would get without team mode.
 */

export interface TokenUsage {
  readonly promptTokens: number | null
  readonly completionTokens: number | null
  readonly totalTokens: number | null
}

/** The request body to send upstream, with `include_usage` asked for when the client did not. */
export function withUsageRequested(parsed: Readonly<Record<string, unknown>>): { body: Record<string, unknown>; injected: boolean } {
  const options = parsed.stream_options
  if (isRecord(options) && options.include_usage === true) return { body: { ...parsed }, injected: false }
  return { body: { ...parsed, stream_options: { ...(isRecord(options) ? options : {}), include_usage: true } }, injected: true }
}

/** The `usage` of a non-streaming answer, or undefined when it has none. */
export function usageOfBody(body: Buffer): TokenUsage | undefined {
  try {
    return usageOf((JSON.parse(body.toString('utf8')) as { usage?: unknown } | null)?.usage)
  } catch {
    return undefined
  }
}

const EVENT_END = Buffer.from('\n\n')
const EVENT_END_CRLF = Buffer.from('\r\n\r\n')
const USAGE_KEY = Buffer.from('"usage"')

/**
 * Watches a relayed stream for its usage chunk. With `dropInjected`, the event that carries only
 * usage (`"choices":[]`) is taken out of the stream; to decide that, an event is forwarded once it
 * is complete (upstream chunks end on event boundaries, so in practice nothing waits). Without it,
 * every byte is forwarded as it comes and only read.
 */
export class StreamUsageTap {
  usage: TokenUsage | undefined = undefined
  private pending: Buffer | undefined = undefined
  private readonly dropInjected: boolean

  constructor(dropInjected: boolean) {
    this.dropInjected = dropInjected
  }

  /** The bytes of `chunk` to forward now (possibly fewer, or more with what was held back). */
  push(chunk: Buffer): Buffer {
    const bytes = this.pending === undefined ? chunk : Buffer.concat([this.pending, chunk])
    const completeLength = lastEventEnd(bytes)
    if (completeLength === -1) {
      this.pending = bytes
      return this.dropInjected ? EMPTY : chunk
    }
    const complete = bytes.subarray(0, completeLength)
    this.pending = completeLength < bytes.length ? bytes.subarray(completeLength) : undefined
    // The usual chunk holds no usage at all: one indexOf, forwarded untouched.
    if (complete.indexOf(USAGE_KEY) === -1) return this.dropInjected ? complete : chunk
    const kept = this.readEvents(complete)
    return this.dropInjected ? kept : chunk
  }

  /** What is still held back when the stream ends (an event without its blank line). */
  flush(): Buffer {
    const rest = this.pending
    this.pending = undefined
    if (rest === undefined || !this.dropInjected) return EMPTY
    return rest
  }

  private readEvents(complete: Buffer): Buffer {
    const kept: Buffer[] = []
    let start = 0
    while (start < complete.length) {
      const end = nextEventEnd(complete, start)
      const stop = end === -1 ? complete.length : end
      const event = complete.subarray(start, stop)
      start = stop
      const chunk = event.indexOf(USAGE_KEY) === -1 ? undefined : parseData(event)
      const usage = usageOf(chunk?.usage)
      if (usage !== undefined) this.usage = usage
      const usageOnly = usage !== undefined && Array.isArray(chunk?.choices) && chunk.choices.length === 0
      if (!(this.dropInjected && usageOnly)) kept.push(event)
    }
    return Buffer.concat(kept)
  }
}

/** Where the event starting at `from` ends, its blank line included; -1 when it has not yet. */
function nextEventEnd(bytes: Buffer, from: number): number {
  const lf = bytes.indexOf(EVENT_END, from)
  const crlf = bytes.indexOf(EVENT_END_CRLF, from)
  if (lf === -1) return crlf === -1 ? -1 : crlf + EVENT_END_CRLF.length
  return crlf === -1 || lf < crlf ? lf + EVENT_END.length : crlf + EVENT_END_CRLF.length
}

/** The length of the complete events at the start of `bytes`, or -1 when there is none. */
function lastEventEnd(bytes: Buffer): number {
  const lf = bytes.lastIndexOf(EVENT_END)
  const crlf = bytes.lastIndexOf(EVENT_END_CRLF)
  return Math.max(lf === -1 ? -1 : lf + EVENT_END.length, crlf === -1 ? -1 : crlf + EVENT_END_CRLF.length)
}

function parseData(event: Buffer): { usage?: unknown; choices?: unknown } | undefined {
  const text = event.toString('utf8')
  const at = text.indexOf('data:')
  if (at === -1) return undefined
  try {
    return JSON.parse(text.slice(at + 5).trim()) as { usage?: unknown; choices?: unknown }
  } catch {
    return undefined
  }
}

function usageOf(value: unknown): TokenUsage | undefined {
  if (!isRecord(value)) return undefined
  const count = (field: unknown) => (typeof field === 'number' && Number.isFinite(field) && field >= 0 ? field : null)
  const promptTokens = count(value.prompt_tokens)
  const completionTokens = count(value.completion_tokens)
  const totalTokens =
    count(value.total_tokens) ?? (promptTokens !== null && completionTokens !== null ? promptTokens + completionTokens : null)
  return { promptTokens, completionTokens, totalTokens }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

const EMPTY = Buffer.alloc(0)
