import { type DestinationStream, type Logger, pino } from 'pino'
import type { LogLevel } from './config.js'

/**
 * The process logger: pino JSON, with every place a key could hide redacted. The proxy never logs
 * headers itself; redaction is the second line of defence, not the first.
 */

/**
 * What a module that reports events and transitions needs of the logger: pino's Logger is one, and
 * tests pass a recorder. The retrier, the Redis parts and the usage writer all take this.
 */
export interface EventLog {
  info(details: object, message: string): void
  warn(details: object, message: string): void
}

export const REDACTED_PATHS = [
  'authorization',
  'apiKey',
  'headers.authorization',
  'headers["x-api-key"]',
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'req.headers.cookie',
  'res.headers["set-cookie"]',
  'config.apiKey',
]

export function buildLogger(level: LogLevel, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service: 'toprouter-proxy' },
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  }
  // Asynchronous stdout: lines written while a write is in flight go out together, instead of one
  // write(2) per request on the hot path. drainLogs() must run before the process exits.
  return pino(options, destination ?? pino.destination({ fd: 1, sync: false }))
}

interface AsyncDestination {
  readonly _writing?: boolean
  once(event: 'drain' | 'error', listener: () => void): unknown
}

/**
 * Waits until the stdout destination has written everything, so nothing is lost at exit and
 * pino's exit-time flushSync() has nothing left to write. That matters: flushSync() retries a
 * failed write forever, so with the reader of stdout gone (Ctrl-C on `proxy | pino-pretty`) an
 * unflushed buffer would hang the exit. An async write that fails instead emits 'error', which
 * pino answers by turning the destination into a no-op.
 */
export function drainLogs(logger: Logger, timeoutMs = 2000): Promise<void> {
  const destination = (logger as unknown as Record<symbol, AsyncDestination | undefined>)[pino.symbols.streamSym]
  if (destination?._writing !== true) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs)
    const done = () => {
      clearTimeout(timer)
      resolve()
    }
    destination.once('drain', done)
    destination.once('error', done)
  })
}

const KEY_PATTERN = /\b(sk|tr|or)-[A-Za-z0-9_-]{12,}/g

/**
 * Scrubs anything key-like from text that came from the upstream before a client or a log sees
 * it: an upstream that echoes the shared gateway key would otherwise hand it to every client.
 */
export function scrubSecrets(text: string, apiKey: string | undefined): string {
  let scrubbed = apiKey !== undefined && apiKey.length > 0 ? text.split(apiKey).join('[redacted]') : text
  scrubbed = scrubbed.replace(KEY_PATTERN, (match) => `${match.slice(0, 3)}[redacted]`)
  return scrubbed
}
