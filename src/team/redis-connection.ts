import { Redis } from 'ioredis'

/**
 * The two kinds of Redis connection team mode opens, with one set of options each: a command
 * connection that never makes a request wait on a dead Redis (no offline queue, no retries, a short
 * timeout), and a subscriber whose SUBSCRIBE waits for the connection and is renewed after a
 * reconnect. Both reconnect on their own, at most a second apart.
 */

const reconnectSoon = (times: number) => Math.min(times * 100, 1_000)

export interface CommandConnectionOptions {
  readonly commandTimeoutMs: number
  readonly connectTimeoutMs: number
  /** False for one-shot use (the CLI): give up instead of reconnecting. @default true */
  readonly reconnect?: boolean
}

export function commandConnection(redisUrl: string, options: CommandConnectionOptions): Redis {
  return new Redis(redisUrl, {
    lazyConnect: true,
    // Commands issued in one event-loop turn go out in one write: under load, one syscall for
    // many requests' admissions instead of one each (the write was ~10 % of the proxy's CPU).
    enableAutoPipelining: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: options.commandTimeoutMs,
    connectTimeout: options.connectTimeoutMs,
    retryStrategy: options.reconnect === false ? () => null : reconnectSoon,
  })
}

/**
 * A subscriber to `channel`: the caller's first SUBSCRIBE waits in the offline queue for the
 * connection, and every reconnect subscribes again. Not ioredis's autoResubscribe: its SUBSCRIBE
 * after a reconnect is a promise no one handles, so a connection closing again before the reply
 * (Redis flapping, or the drain) would be an unhandled rejection, which ends the process.
 */
export function subscriberConnection(
  redisUrl: string,
  channel: string,
  options: { readonly connectTimeoutMs: number; readonly commandTimeoutMs?: number },
): Redis {
  const subscriber = new Redis(redisUrl, {
    lazyConnect: true,
    enableOfflineQueue: true,
    maxRetriesPerRequest: null,
    autoResubscribe: false,
    connectTimeout: options.connectTimeoutMs,
    ...(options.commandTimeoutMs === undefined ? {} : { commandTimeout: options.commandTimeoutMs }),
    retryStrategy: reconnectSoon,
  })
  let readyBefore = false
  subscriber.on('ready', () => {
    if (readyBefore) subscriber.subscribe(channel).catch(ignore)
    readyBefore = true
  })
  return subscriber
}

function ignore(): void {}
