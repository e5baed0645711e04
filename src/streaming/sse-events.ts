/**
 * Where server-sent events begin and end in a stream's bytes, for the taps that read a relayed
 * stream event by event (team mode's usage tap, stream continuation's text tap). An event ends with
 * a blank line, `\n\n` or `\r\n\r\n`; a multi-byte character never contains either, so the bytes of
 * complete events always decode whole.
 */

const EVENT_END = Buffer.from('\n\n')
const EVENT_END_CRLF = Buffer.from('\r\n\r\n')

export const EMPTY = Buffer.alloc(0)

/** Where the event starting at `from` ends, its blank line included; -1 when it has not yet. */
export function nextEventEnd(bytes: Buffer, from: number): number {
  const lf = bytes.indexOf(EVENT_END, from)
  const crlf = bytes.indexOf(EVENT_END_CRLF, from)
  if (lf === -1) return crlf === -1 ? -1 : crlf + EVENT_END_CRLF.length
  return crlf === -1 || lf < crlf ? lf + EVENT_END.length : crlf + EVENT_END_CRLF.length
}

/** True when the bytes end exactly on an event boundary (the usual upstream chunk). */
export function endsAnEvent(bytes: Buffer): boolean {
  const n = bytes.length
  return (
    n >= 2 && bytes[n - 1] === 0x0a && (bytes[n - 2] === 0x0a || (bytes[n - 2] === 0x0d && bytes[n - 3] === 0x0a && bytes[n - 4] === 0x0d))
  )
}

/** The length of the complete events at the start of `bytes`, or -1 when there is none. */
export function lastEventEnd(bytes: Buffer): number {
  const lf = bytes.lastIndexOf(EVENT_END)
  const crlf = bytes.lastIndexOf(EVENT_END_CRLF)
  return Math.max(lf === -1 ? -1 : lf + EVENT_END.length, crlf === -1 ? -1 : crlf + EVENT_END_CRLF.length)
}

/** An event's `data:` payload parsed as JSON; undefined for a comment, `[DONE]` or anything not JSON. */
export function parseEventData(event: Buffer): unknown {
  const text = event.toString('utf8')
  const at = text.indexOf('data:')
  if (at === -1) return undefined
  try {
    return JSON.parse(text.slice(at + 5).trim()) as unknown
  } catch {
    return undefined
  }
}
