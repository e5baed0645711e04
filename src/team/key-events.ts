import type { Redis } from 'ioredis'
import type { EventLog } from '../logging.js'
import { commandConnection, subscriberConnection } from './redis-connection.js'

/**
 * Key changes across replicas: with `team.redisUrl`, a key update or revocation (admin API on any
 * replica, or the CLI) is published on the Redis channel `<prefix>keys` with the key's id only (no
 * secret, no hash), and every replica, subscribed on a connection of its own, drops that key from
 * its key cache at once. Without Redis, or while it is down, `keyCacheTtlMs` is the safety net.
 *
 * No command waits on a dead Redis: the publisher has no offline queue and short timeouts; the
 * subscriber reconnects by itself and subscribes again on reconnect (redis-connection.ts). A
 * change published while this replica's subscriber was away is not delivered later, so on every
 * reconnect the whole key cache is dropped (`onMissedChanges`): each key is read once more.
 */

export interface KeyEventsOptions {
  readonly redisUrl: string
  readonly keyPrefix: string
  readonly log: EventLog
  /** Called with the id of every key changed on any replica (this one included). */
  readonly onKeyChanged: (keyId: string) => void
  /** The subscriber reconnected: changes may have been missed meanwhile. */
  readonly onMissedChanges: () => void
  /** @default 1000 */
  readonly connectTimeoutMs?: number
}

export interface KeyEvents {
  /** Connects both connections; resolves even when Redis is down (then they keep trying in the background). */
  connect(): Promise<void>
  /** Tells every replica the key changed; false when Redis is unreachable (then logged once per call). */
  publish(keyId: string): Promise<boolean>
  close(): Promise<void>
}

export const keyEventsChannel = (keyPrefix: string): string => `${keyPrefix}keys`

const COMMAND_TIMEOUT_MS = 200
const CONNECT_TIMEOUT_MS = 1_000

function publisherFor(redisUrl: string, connectTimeoutMs: number, reconnect: boolean): Redis {
  const redis = commandConnection(redisUrl, { commandTimeoutMs: COMMAND_TIMEOUT_MS, connectTimeoutMs, reconnect })
  redis.on('error', ignore)
  return redis
}

export function createKeyEvents(options: KeyEventsOptions): KeyEvents {
  const { log, onKeyChanged, onMissedChanges } = options
  const channel = keyEventsChannel(options.keyPrefix)
  const connectTimeoutMs = options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS
  const publisher = publisherFor(options.redisUrl, connectTimeoutMs, true)
  const subscriber = subscriberConnection(options.redisUrl, channel, { connectTimeoutMs })
  subscriber.on('error', ignore)
  subscriber.on('message', (from: string, keyId: string) => {
    if (from === channel && keyId !== '') onKeyChanged(keyId)
  })
  let closing = false
  let subscribed: Promise<unknown> | undefined
  let wasReady = false
  let away = false
  subscriber.on('ready', () => {
    if (away) {
      away = false
      onMissedChanges()
      log.info({ channel }, 'key changes channel back: cached keys dropped, since changes made meanwhile were not received')
    }
    wasReady = true
  })
  subscriber.on('close', () => {
    if (wasReady && !closing) away = true
  })

  return {
    async connect() {
      publisher.connect().catch(ignore)
      subscriber.connect().catch(ignore)
      subscribed = subscriber
        .subscribe(channel)
        .then(() => log.info({ channel }, 'key changes are shared by the replicas through Redis'), ignore)
      // Wait for the subscription a little (so a change right after startup is seen), never longer.
      await Promise.race([subscribed, new Promise((resolve) => setTimeout(resolve, connectTimeoutMs).unref())])
    },
    async publish(keyId) {
      try {
        await publisher.publish(channel, keyId)
        return true
      } catch (error: unknown) {
        if (!closing) {
          log.warn(
            { keyId, err: error },
            'key change not published (Redis unreachable): the other replicas pick it up within team.keyCacheTtlMs',
          )
        }
        return false
      }
    },
    async close() {
      closing = true
      publisher.disconnect()
      subscriber.disconnect()
      await subscribed
    },
  }
}

/**
 * The CLI's one-shot publish: connects (short timeout, no retries), publishes, disconnects.
 * Resolves with the error when Redis is unreachable, undefined when published.
 */
export async function publishKeyChangeOnce(
  redisUrl: string,
  keyPrefix: string,
  keyId: string,
  connectTimeoutMs = CONNECT_TIMEOUT_MS,
): Promise<Error | undefined> {
  const redis = publisherFor(redisUrl, connectTimeoutMs, false)
  try {
    await redis.connect()
    await redis.publish(keyEventsChannel(keyPrefix), keyId)
    return undefined
  } catch (error: unknown) {
    return error instanceof Error ? error : new Error(String(error))
  } finally {
    redis.disconnect()
  }
}

function ignore(): void {}
