import type { AddressInfo } from 'node:net'
import { parseArgs } from 'node:util'
import httpProxy from '@fastify/http-proxy'
import Fastify from 'fastify'

/**
 * The floor: Fastify 5 + @fastify/http-proxy (reply-from over undici) passing every request through
 * to the upstream, logging off, no validation, no error shaping — what the framework costs with
 * no product logic. Run as its own process:
 *
 *   node --import tsx bench/floor.ts --port 0 --upstream http://127.0.0.1:N
 *
 * prints `{"port":N}` on stdout once listening.
 */

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    upstream: { type: 'string' },
  },
  strict: true,
})

if (values.upstream === undefined) {
  process.stderr.write('usage: floor.ts --port N --upstream URL\n')
  process.exit(2)
}

const app = Fastify({ logger: false, connectionTimeout: 0, keepAliveTimeout: 72_000 })
await app.register(httpProxy, {
  upstream: values.upstream,
  // The same pool shape as the proxy's upstream client (1024 keep-alive connections, no pipelining).
  undici: { connections: 1024, pipelining: 1, keepAliveTimeout: 30_000 },
})

await app.listen({ host: values.host, port: Number(values.port) })
const address = app.server.address() as AddressInfo
process.stdout.write(`${JSON.stringify({ port: address.port })}\n`)

async function shutdown(): Promise<void> {
  setTimeout(() => process.exit(0), 2000).unref()
  await app.close()
  process.exit(0)
}
process.on('SIGTERM', () => void shutdown())
process.on('SIGINT', () => void shutdown())
