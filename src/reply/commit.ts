import type { OutgoingHttpHeaders } from 'node:http'
import type { FastifyReply } from 'fastify'
import { forwardableResponseHeaders, headerSafe } from '../http-headers.js'
import { type ChunkTap, type RelayedStream, type ResumeStream, relayStream } from '../streaming/sse.js'
import type { Served } from '../upstream/attempt.js'

/**
 * Commits a served answer to the client: status and headers (plus `x-proxy-attempts` and
 * `x-proxy-model`), then either the buffered body, or — for a stream — the chunks read up to the
 * first event and the rest of the stream, relayed straight to the socket.
 */

export interface CommitOptions {
  readonly model: string
  readonly attempts: number
  /** The gateway's key: an upstream header that echoes it is not passed on. */
  readonly secret: string | undefined
  readonly streamIdleTimeoutMs: number
  /** Team mode: the key's own `x-ratelimit-*`, which replace the upstream's (those describe the shared key). */
  readonly rateLimitHeaders?: Readonly<Record<string, string>> | undefined
  /** Sees a stream's chunks before the client (team mode's usage tap, continuation's text tap). */
  readonly tap?: ChunkTap | undefined
  /** Stream continuation: the next part of a stream cut after its commit. */
  readonly resume?: ResumeStream | undefined
}

/** Sends the answer; for a stream, returns it as it is being relayed (its ending is known later). */
export function commit(reply: FastifyReply, served: Served, options: CommitOptions): RelayedStream | undefined {
  const { response, firstChunks, body } = served
  reply.code(response.statusCode)
  const own = options.rateLimitHeaders
  reply.headers(forwardableResponseHeaders(response.headers, false, options.secret, own !== undefined))
  if (own !== undefined) reply.headers(own)
  reply.header('x-proxy-attempts', String(options.attempts))
  reply.header('x-proxy-model', headerSafe(options.model))
  if (firstChunks === undefined) {
    reply.send(body)
    return undefined
  }
  reply.header('cache-control', response.headers['cache-control'] ?? 'no-cache')
  reply.header('x-accel-buffering', 'no')
  // The relay writes to the socket itself: a stream in between (what reply.send(stream) needs)
  // costs more per chunk than everything else the proxy does to it. Fastify's hooks do not run
  // for a hijacked reply; request-log.ts records the request when the response closes.
  reply.hijack()
  reply.raw.writeHead(response.statusCode, reply.getHeaders() as OutgoingHttpHeaders)
  return relayStream(response.body, firstChunks, reply.raw, options.streamIdleTimeoutMs, options.tap, options.resume)
}
