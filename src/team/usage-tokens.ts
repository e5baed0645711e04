import { EMPTY, endsAnEvent, lastEventEnd, nextEventEnd, parseEventData } from '../streaming/sse-events.js'

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

/** A chat request as its body bytes and its parsed fields. */
export interface ChatBody {
  readonly body: Buffer
  readonly parsed: Readonly<Record<string, unknown>>
}

const USAGE_OPTION = Buffer.from('"stream_options":{"include_usage":true},')

/**
 * The request to send upstream with `include_usage` asked for, or undefined when the client asked
 * for it itself. Without `stream_options` the option is spliced in after the body's opening brace,
 * so the rest of the client's bytes go as they are (and no re-serialisation is paid per stream).
 */
export function withUsageRequested(chat: ChatBody): ChatBody | undefined {
  const options = chat.parsed.stream_options
  if (isRecord(options) && options.include_usage === true) return undefined
  const parsed = { ...chat.parsed, stream_options: { ...(isRecord(options) ? options : {}), include_usage: true } }
  const brace = chat.body.indexOf(0x7b)
  if (options !== undefined || brace === -1) return { parsed, body: Buffer.from(JSON.stringify(parsed)) }
  // The body is an object with at least `model`, so a comma always has a member to precede.
  return { parsed, body: Buffer.concat([chat.body.subarray(0, brace + 1), USAGE_OPTION, chat.body.subarray(brace + 1)]) }
}

const USAGE_FIELD = Buffer.from('"usage"')

/**
 * The `usage` of a non-streaming answer, or undefined when it has none. Only the `usage` object is
 * parsed, found from the end (where OpenAI-style answers put it): parsing the whole answer cost
 * more than everything else team mode does to a request. Inside a JSON string a quote is always
 * escaped, so a raw `"usage":` is a key; when the tail does not hold one, the whole body is parsed.
 */
export function usageOfBody(body: Buffer): TokenUsage | undefined {
  const at = body.lastIndexOf(USAGE_FIELD)
  if (at === -1) return undefined
  const object = objectAfterKey(body, at + USAGE_FIELD.length)
  if (object !== undefined) {
    const counted = countsIn(object)
    if (counted !== undefined) return counted
    try {
      return usageOf(JSON.parse(object.toString('utf8')))
    } catch {}
  }
  try {
    return usageOf((JSON.parse(body.toString('utf8')) as { usage?: unknown } | null)?.usage)
  } catch {
    return undefined
  }
}

/** The bytes of the JSON object that follows `"key"` + `:` at `from`, or undefined when none does. */
function objectAfterKey(bytes: Buffer, from: number): Buffer | undefined {
  let i = from
  while (isJsonSpace(bytes[i])) i++
  if (bytes[i] !== 0x3a) return undefined // ':'
  i++
  while (isJsonSpace(bytes[i])) i++
  if (bytes[i] !== 0x7b) return undefined // '{'
  const start = i
  let depth = 0
  let inString = false
  for (; i < bytes.length; i++) {
    const byte = bytes[i]
    if (inString) {
      if (byte === 0x5c)
        i++ // a backslash escapes the next byte
      else if (byte === 0x22) inString = false
    } else if (byte === 0x22) inString = true
    else if (byte === 0x7b) depth++
    else if (byte === 0x7d && --depth === 0) return bytes.subarray(start, i + 1)
  }
  return undefined
}

const COUNT_KEYS = [Buffer.from('"prompt_tokens"'), Buffer.from('"completion_tokens"'), Buffer.from('"total_tokens"')] as const

/**
 * The three counts read straight from the usage object's bytes when each is a plain whole number
 * (the usual case); undefined otherwise, and the object is parsed instead.
 */
function countsIn(object: Buffer): TokenUsage | undefined {
  const [prompt, completion, total] = COUNT_KEYS.map((key) => wholeNumberAfter(object, key))
  if (prompt === undefined || completion === undefined || total === undefined) return undefined
  return { promptTokens: prompt, completionTokens: completion, totalTokens: total }
}

function wholeNumberAfter(bytes: Buffer, key: Buffer): number | undefined {
  const at = bytes.indexOf(key)
  // A second occurrence would be a nested object's key: leave that to the parser.
  if (at === -1 || bytes.indexOf(key, at + 1) !== -1) return undefined
  let i = at + key.length
  while (isJsonSpace(bytes[i])) i++
  if (bytes[i] !== 0x3a) return undefined
  i++
  while (isJsonSpace(bytes[i])) i++
  let value = 0
  let digits = 0
  for (let byte = bytes[i]; byte !== undefined && byte >= 0x30 && byte <= 0x39; byte = bytes[++i]) {
    value = value * 10 + (byte - 0x30)
    digits++
  }
  const next = bytes[i]
  const ends = next === 0x2c || next === 0x7d || isJsonSpace(next)
  return digits > 0 && digits <= 15 && ends ? value : undefined
}

function isJsonSpace(byte: number | undefined): boolean {
  return byte === 0x20 || byte === 0x0a || byte === 0x0d || byte === 0x09
}

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
    // The usual chunk ends on an event boundary: no backwards search for one.
    const completeLength = endsAnEvent(bytes) ? bytes.length : lastEventEnd(bytes)
    if (completeLength === -1) {
      this.pending = bytes
      return this.dropInjected ? EMPTY : chunk
    }
    const complete = completeLength === bytes.length ? bytes : bytes.subarray(0, completeLength)
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
      const chunk =
        event.indexOf(USAGE_KEY) === -1 ? undefined : (parseEventData(event) as { usage?: unknown; choices?: unknown } | undefined)
      const usage = usageOf(chunk?.usage)
      if (usage !== undefined) this.usage = usage
      const usageOnly = usage !== undefined && Array.isArray(chunk?.choices) && chunk.choices.length === 0
      if (!(this.dropInjected && usageOnly)) kept.push(event)
    }
    return Buffer.concat(kept)
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
