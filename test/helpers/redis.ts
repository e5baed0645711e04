import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import type { Test } from 'tap'
import { freePort } from './free-port.js'

/**
 * The shared Redis of the Redis tests: 127.0.0.1:6379 (CI has it; outside CI the tests skip
 * without it), and a random key prefix per test whose keys are deleted after it.
 */

export const SHARED_REDIS = 'redis://127.0.0.1:6379'

const sharedReachable = (async () => {
  const probe = new Redis(SHARED_REDIS, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  })
  probe.on('error', () => {})
  try {
    await probe.connect()
    return (await probe.ping()) === 'PONG'
  } catch {
    return false
  } finally {
    probe.disconnect()
  }
})()

/** False (the test skipped, or failed under CI) when the shared Redis is not there. */
export async function needSharedRedis(t: Test): Promise<boolean> {
  if (await sharedReachable) return true
  const message = `Redis at 127.0.0.1:6379 is not reachable (start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no)`
  if (process.env.CI) t.fail(message)
  else t.plan(0, message)
  return false
}

/** A random key prefix for this test; its keys are deleted after it. */
export function prefixFor(t: Test, url = SHARED_REDIS): string {
  const prefix = `test:${Math.random().toString(36).slice(2)}:`
  t.teardown(async () => {
    const cleaner = new Redis(url, { enableOfflineQueue: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
    cleaner.on('error', () => {})
    try {
      const keys = await cleaner.keys(`${prefix}*`)
      if (keys.length > 0) await cleaner.del(...keys)
    } catch {
      // a private Redis already gone
    } finally {
      cleaner.disconnect()
    }
  })
  return prefix
}

/** Every message on `channel` from now until the test ends. */
export async function listen(t: Test, channel: string): Promise<string[]> {
  const messages: string[] = []
  const subscriber = new Redis(SHARED_REDIS, { maxRetriesPerRequest: 0, retryStrategy: () => null })
  subscriber.on('error', () => {})
  subscriber.on('message', (from: string, message: string) => {
    if (from === channel) messages.push(message)
  })
  t.teardown(() => subscriber.disconnect())
  await subscriber.subscribe(channel)
  return messages
}

const redisServerInstalled = spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).error === undefined

/**
 * False (the test skipped, or failed under CI) when there is no `redis-server` on the PATH to
 * start a {@link privateRedis} with.
 */
export function needRedisServer(t: Test): boolean {
  if (redisServerInstalled) return true
  const message = 'redis-server is not on the PATH (the Redis fault tests start a private one)'
  if (process.env.CI) t.fail(message)
  else t.plan(0, message)
  return false
}

export interface PrivateRedis {
  readonly url: string
  /** SIGKILLs it (its data is gone: it keeps nothing on disk). */
  kill(): Promise<void>
  /** Starts it again on the same port, empty; resolves once it answers PING. */
  start(): Promise<void>
}

/** A redis-server of this test's own on a free port, to kill and restart; killed after the test. */
export async function privateRedis(t: Test): Promise<PrivateRedis> {
  const port = await freePort()
  let child: ChildProcess | undefined
  const start = async () => {
    child = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no'],
      {
        stdio: 'ignore',
      },
    )
    const probe = new Redis(port, '127.0.0.1', { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 })
    probe.on('error', () => {})
    for (let i = 0; i < 100; i++) {
      try {
        await probe.connect()
        await probe.ping()
        probe.disconnect()
        return
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }
    throw new Error(`redis-server on port ${port} did not start`)
  }
  const kill = async () => {
    const running = child
    child = undefined
    if (running === undefined || running.exitCode !== null || running.signalCode !== null) return
    const exited = once(running, 'exit')
    running.kill('SIGKILL')
    await exited
  }
  t.teardown(kill)
  await start()
  return { url: `redis://127.0.0.1:${port}`, kill, start }
}
