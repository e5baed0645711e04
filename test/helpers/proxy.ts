import type { AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import { stringify } from 'yaml'
import { buildApp, type ProxyApp } from '../../src/app.js'
import { type Config, loadConfig } from '../../src/config.js'

/** A real proxy on port 0 over a real socket, configured through the same loader as production. */

export interface TestProxy extends ProxyApp {
  readonly url: string
  readonly config: Config
  /** Every log line written so far, as text. */
  readonly logText: () => string
  readonly logLines: () => Array<Record<string, unknown>>
}

interface Teardown {
  teardown(fn: () => unknown): void
}

export interface TestProxyOptions {
  readonly upstreamUrl: string
  /** YAML sections to merge over the defaults, e.g. `{ retry: { maxAttempts: 1 } }`. */
  readonly config?: Record<string, unknown>
  readonly env?: Record<string, string>
  readonly random?: () => number
}

export async function startProxy(t: Teardown, options: TestProxyOptions): Promise<TestProxy> {
  // Tests run with millisecond backoff unless they set their own; the policy itself is unit-tested.
  const sections: Record<string, unknown> = { log: { level: 'info' }, ...options.config }
  sections.retry = { baseDelayMs: 2, maxDelayMs: 10, ...(options.config?.retry as object | undefined) }
  const yaml = stringify(sections)
  const config = loadConfig({
    configPath: 'test-config.yaml',
    readFile: () => yaml,
    env: { ...options.env },
    flags: { upstream: options.upstreamUrl, port: '0' },
  })
  const logChunks: string[] = []
  const logDestination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      logChunks.push(chunk.toString())
      callback()
    },
  })
  const proxy = buildApp(config, { logDestination, ...(options.random ? { random: options.random } : {}) })
  await proxy.app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(() => proxy.app.close())
  const { port } = proxy.app.server.address() as AddressInfo
  const logText = () => logChunks.join('')
  return {
    ...proxy,
    url: `http://127.0.0.1:${port}`,
    config,
    logText,
    logLines: () =>
      logText()
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as Record<string, unknown>),
  }
}
