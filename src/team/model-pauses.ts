import { createModelPauseMap, type ModelPauses } from '../upstream/model-pauses.js'
import { commandConnection, subscriberConnection } from './redis-connection.js'

/**
 * The fleet's model pauses (team.redisUrl): a replica that sees a 429 with pushback publishes
 * `{ model, untilMs }` on `<prefix>pauses` and SETs `<prefix>pause:<model>` with PX, so a replica
 * starting later reads the pauses in force; every replica subscribes (a dedicated connection) and
 * records each pause in its in-memory map. The request path only reads that map — no Redis round
 * trip; a pause is best effort (Redis down: each replica still pauses on its own 429s).
 */

export interface RedisModelPausesOptions {
  readonly redisUrl: string
  /** The prefix of every Redis key; replicas sharing it share pauses. */
  readonly keyPrefix: string
  readonly log: { warn(details: object, message: string): void }
  /** Epoch ms. @default Date.now */
  readonly wallClockNow?: () => number
}

export interface RedisModelPauses extends ModelPauses {
  /** Subscribes and reads the pauses in force; Redis down does not throw (ioredis reconnects). */
  connect(): Promise<void>
  close(): Promise<void>
}

export function createRedisModelPauses(options: RedisModelPausesOptions): RedisModelPauses {
  const { keyPrefix, log } = options
  const wallClockNow = options.wallClockNow ?? Date.now
  const local = createModelPauseMap(wallClockNow)
  const channel = `${keyPrefix}pauses`
  const keyOf = (model: string) => `${keyPrefix}pause:${model}`
  const timeouts = { commandTimeoutMs: 500, connectTimeoutMs: 1_000 }
  const publisher = commandConnection(options.redisUrl, timeouts)
  // The subscriber keeps its SUBSCRIBE queued while Redis is down and subscribes again after a
  // reconnect (redis-connection.ts).
  const subscriber = subscriberConnection(options.redisUrl, channel, timeouts)
  publisher.on('error', ignore)
  subscriber.on('error', ignore)
  subscriber.on('message', (from: string, message: string) => {
    if (from !== channel) return
    const pause = parsePause(message)
    if (pause !== undefined) local.pause(pause.model, pause.untilMs)
  })

  async function readPausesInForce(): Promise<void> {
    const prefix = keyOf('')
    let cursor = '0'
    do {
      const [next, keys] = await publisher.scan(cursor, 'MATCH', `${escapeGlob(prefix)}*`, 'COUNT', 200)
      cursor = next
      if (keys.length === 0) continue
      const values = await publisher.mget(...keys)
      keys.forEach((key, index) => {
        const untilMs = Number(values[index])
        if (Number.isFinite(untilMs)) local.pause(key.slice(prefix.length), untilMs)
      })
    } while (cursor !== '0')
  }

  return {
    pausedForMs: (model) => local.pausedForMs(model),
    pause(model, untilMs) {
      local.pause(model, untilMs)
      const ttlMs = Math.ceil(untilMs - wallClockNow())
      if (ttlMs <= 0) return
      const message = JSON.stringify({ model, untilMs })
      publisher
        .multi()
        .publish(channel, message)
        .set(keyOf(model), String(untilMs), 'PX', ttlMs)
        .exec()
        .catch((error: unknown) => log.warn({ err: error, model }, 'could not share a model pause over Redis; paused on this replica only'))
    },
    async connect() {
      const subscribed = subscriber.subscribe(channel).then(ignore, ignore)
      try {
        await publisher.connect()
        await subscribed
        await readPausesInForce()
      } catch (error: unknown) {
        log.warn({ err: error }, 'Redis unreachable for model pauses: pauses stay per replica until it is back')
      }
    },
    async close() {
      publisher.disconnect()
      subscriber.disconnect()
    },
  }
}

function parsePause(message: string): { model: string; untilMs: number } | undefined {
  try {
    const value = JSON.parse(message) as { model?: unknown; untilMs?: unknown }
    if (typeof value.model === 'string' && typeof value.untilMs === 'number') return { model: value.model, untilMs: value.untilMs }
  } catch {
    // not ours
  }
  return undefined
}

function escapeGlob(text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&')
}

function ignore(): void {}
