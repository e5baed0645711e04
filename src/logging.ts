import { pino, type DestinationStream, type Logger } from 'pino'
import type { LogLevel } from './config.js'

/**
 * The process logger: pino JSON, with every place a key could hide redacted. The proxy never logs
 * headers itself; redaction is the second line of defence, not the first.
 */

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
  // A synchronous stdout: on exit, pino's flush of an async destination retries EPIPE forever when
  // the reader of stdout (a pipe to pino-pretty, say) died with the same Ctrl-C, hanging shutdown.
  return pino(options, destination ?? pino.destination({ fd: 1, sync: true }))
}

const KEY_PATTERN = /\b(sk|tr|or)-[A-Za-z0-9_\-]{12,}/g

/**
 * Scrubs anything key-like from text that came from the upstream before a client or a log sees
 * it: an upstream that echoes the shared gateway key would otherwise hand it to every client.
 */
export function scrubSecrets(text: string, apiKey: string | undefined): string {
  let scrubbed = apiKey !== undefined && apiKey.length > 0 ? text.split(apiKey).join('[redacted]') : text
  scrubbed = scrubbed.replace(KEY_PATTERN, (match) => `${match.slice(0, 3)}[redacted]`)
  return scrubbed
}
