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
  return pino(options, destination ?? batchedStdout())
}

/** A batch of log lines is written once it holds this much, or this long after its first line. */
const LOG_BATCH_BYTES = 4096
const LOG_BATCH_MS = 100

interface SonicBoomState {
  readonly _len: number
  readonly _writing: boolean
  readonly destroyed: boolean
  write(line: string): boolean
  flush(): void
  once(event: 'drain' | 'error', listener: () => void): unknown
  on(event: 'drain', listener: () => void): unknown
  off(event: 'drain' | 'error', listener: () => void): unknown
}

/** How the one line per request (request-log.ts) ends; every other line is an event. */
const REQUEST_LINE_END = '"msg":"request"}\n'

/**
 * Asynchronous stdout, the per-request lines in batches. Each asynchronous write goes through
 * libuv's thread pool (a wake-up there and back, ~7 system calls), so one write per request line
 * would cost more than the request's own network I/O; they are gathered up to 4 KB or 100 ms
 * instead. Any other line (a warning, a transition, the listening line) goes out at once, with the
 * request lines gathered before it. drainLogs() must run before the process exits.
 */
function batchedStdout(): DestinationStream {
  const stdout = pino.destination({ fd: 1, sync: false, minLength: LOG_BATCH_BYTES }) as unknown as SonicBoomState
  let timer: NodeJS.Timeout | undefined
  const startTimer = () => {
    timer = setTimeout(flushBatch, LOG_BATCH_MS)
    timer.unref()
  }
  // A flush while a write is in flight does nothing, so what is still gathered waits for the next timer.
  const flushBatch = () => {
    timer = undefined
    flushBuffered(stdout)
    if (stdout._len > 0) startTimer()
  }
  // An event line that came while a write was in flight goes out as soon as that write is done.
  let eventWaiting = false
  stdout.on('drain', () => {
    if (!eventWaiting) return
    eventWaiting = false
    flushBuffered(stdout)
  })
  const write = stdout.write.bind(stdout)
  stdout.write = (line: string) => {
    const accepted = write(line)
    if (!line.endsWith(REQUEST_LINE_END)) {
      if (stdout._writing) eventWaiting = true
      else flushBuffered(stdout)
    }
    if (timer === undefined && stdout._len > 0) startTimer()
    return accepted
  }
  return stdout as unknown as DestinationStream
}

function flushBuffered(stdout: SonicBoomState): void {
  if (stdout._len > 0 && !stdout._writing && !stdout.destroyed) stdout.flush()
}

function stdoutOf(logger: Logger): SonicBoomState | undefined {
  const destination = (logger as unknown as Record<symbol, Partial<SonicBoomState> | undefined>)[pino.symbols.streamSym]
  return typeof destination?._len === 'number' ? (destination as SonicBoomState) : undefined
}

/**
 * Writes what is gathered and waits until the stdout destination has written everything, so
 * nothing is lost at exit and pino's exit-time flushSync() has nothing left to write. That
 * matters: flushSync() retries a failed write forever, so with the reader of stdout gone (Ctrl-C
 * on `proxy | pino-pretty`) an unflushed buffer would hang the exit. An async write that fails
 * instead emits 'error', which pino answers by turning the destination into a no-op.
 */
export async function drainLogs(logger: Logger, timeoutMs = 2000): Promise<void> {
  const stdout = stdoutOf(logger)
  if (stdout === undefined) return
  const deadline = Date.now() + timeoutMs
  // A write that ends with fewer than a batch's bytes gathered behind it leaves them gathered: flush again.
  while (stdout._len > 0 && !stdout.destroyed && Date.now() < deadline) {
    flushBuffered(stdout)
    if (!stdout._writing) return
    if (await writeFailed(stdout, deadline - Date.now())) return
  }
}

/** Waits for the write in flight: true if it failed, false once it drained (or the time is up). */
function writeFailed(stdout: SonicBoomState, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const settle = (failed: boolean) => {
      clearTimeout(timer)
      stdout.off('drain', onDrain)
      stdout.off('error', onError)
      resolve(failed)
    }
    const onDrain = () => settle(false)
    const onError = () => settle(true)
    const timer = setTimeout(onDrain, Math.max(0, timeoutMs))
    stdout.once('drain', onDrain)
    stdout.once('error', onError)
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
