import type { ServerResponse } from 'node:http'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { Metrics } from './metrics.js'
import type { RequestEnd } from './status/status-recorder.js'
import type { RelayedStream } from './streaming/sse.js'
import type { TeamRequest } from './team/gateway.js'
import type { RequestSpan } from './tracing/request-tracer.js'
import type { UpstreamTrace } from './upstream/attempt.js'

/**
 * The one place a request ends: one log line and one count per request, whether it was answered
 * (buffered or an error), its stream ended, or its client left. What a request cost — the team
 * gateway's usage record — belongs here too.
 */

declare module 'fastify' {
  interface FastifyRequest {
    upstreamTrace: UpstreamTrace | null
    /** Set once the request's log line and metrics sample are written. */
    recorded: boolean
    receivedAtMs: number
    /** The stream the relay is writing, once one is committed. */
    relayedStream: RelayedStream | null
    /** Team mode: the member's side of a chat request, finished here with its usage record. */
    teamRequest: TeamRequest | null
    /** The error shape's code, once the renderer (reply/render-error.ts) answered with one. */
    errorCode: string | null
  }
}

const REQUEST_OF = Symbol('toprouter.request')
type RecordedResponse = ServerResponse & { [REQUEST_OF]?: FastifyRequest }

/** The request's upstream trace, started when it is about to go upstream. */
export function startTrace(request: FastifyRequest, model: string | undefined, span: RequestSpan): UpstreamTrace {
  const trace: UpstreamTrace = { model, servedBy: undefined, attempts: 0, upstreamMs: undefined, upstreamStatus: undefined, span }
  request.upstreamTrace = trace
  return trace
}

/** Told of each request's end (the status page); it must not throw. */
export type RequestEndListener = (end: RequestEnd) => void

export function registerRequestLog(app: FastifyInstance, metrics: Metrics, now: () => number, onEnd?: RequestEndListener): void {
  app.decorateRequest('upstreamTrace', null)
  app.decorateRequest('recorded', false)
  app.decorateRequest('receivedAtMs', 0)
  app.decorateRequest('relayedStream', null)
  app.decorateRequest('teamRequest', null)
  app.decorateRequest('errorCode', null)

  function recordRequest(request: FastifyRequest, status: number, clientGone: boolean): void {
    if (request.recorded) return
    request.recorded = true
    const trace = request.upstreamTrace
    const route = request.routeOptions.url ?? 'unmatched'
    const ending = request.relayedStream?.ending ?? (clientGone && request.relayedStream !== null ? 'client_gone' : undefined)
    const durationMs = Math.round(now() - request.receivedAtMs)
    metrics.request(route, status, trace?.model)
    onEnd?.({
      route,
      model: trace?.model,
      status,
      code: request.errorCode ?? undefined,
      ending,
      durationMs,
      ttftMs: request.relayedStream === null ? undefined : trace?.upstreamMs,
    })
    if (trace !== null) trace.span.end(status, trace.attempts, clientGone)
    request.teamRequest?.finish({ status, clientGone, servedBy: trace?.servedBy, attempts: trace?.attempts ?? 0 }, ending)
    request.log.info(
      {
        method: request.method,
        route,
        status,
        model: trace?.model,
        servedBy: trace?.servedBy,
        attempts: trace?.attempts ?? 0,
        upstreamStatus: trace?.upstreamStatus,
        upstreamMs: trace?.upstreamMs,
        durationMs,
        ...(ending === undefined ? {} : { ending }),
        ...(request.teamRequest?.key === undefined ? {} : { keyName: request.teamRequest.key.name }),
        ...(clientGone ? { clientGone } : {}),
      },
      'request',
    )
  }

  // Fastify runs onResponse only for responses it sent that finished; a client that left, or a
  // stream the relay wrote itself (a hijacked reply), is recorded when its response closes.
  // A named function, not a closure per request.
  function recordOnClose(this: RecordedResponse): void {
    const request = this[REQUEST_OF]
    if (request === undefined || request.recorded) return
    recordRequest(request, this.headersSent ? this.statusCode : 499, !this.writableFinished)
  }

  app.addHook('onRequest', (request, reply, done) => {
    request.receivedAtMs = now()
    ;(reply.raw as RecordedResponse)[REQUEST_OF] = request
    reply.raw.once('close', recordOnClose)
    done()
  })
  app.addHook('onResponse', (request, reply, done) => {
    recordRequest(request, reply.statusCode, false)
    done()
  })
}
