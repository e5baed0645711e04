import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import { proxyError } from './errors.js'
import { sendError, writeRawError } from './reply/render-error.js'

/**
 * What HTTP itself says a server must refuse, refused in the error shape instead of the bare
 * answers Node gives by default (an empty 400 for a missing Host, an empty 417, a destroyed
 * socket for CONNECT), and before anything can reach the upstream.
 */
export function registerFrontDoor(app: FastifyInstance): void {
  // RFC 9110 §10.1.1: an expectation the server cannot meet is a 417.
  app.server.on('checkExpectation', (_request: IncomingMessage, response: ServerResponse) => {
    const refused = proxyError('expectation_failed')
    response.writeHead(refused.status, {
      'content-type': 'application/json; charset=utf-8',
      'x-request-id': randomUUID(),
      'x-should-retry': 'false',
      connection: 'close',
    })
    response.end(JSON.stringify(refused.toBody()))
  })
  // The proxy is never a tunnel: CONNECT is refused like any other method it does not serve.
  app.server.on('connect', (_request: IncomingMessage, socket: Duplex) => {
    writeRawError(socket, proxyError('method_not_allowed', 'CONNECT is not allowed: the proxy is not a tunnel'))
  })

  app.addHook('onRequest', (request, reply, done) => {
    const problem = targetProblem(request.raw)
    if (problem === undefined) {
      done()
      return
    }
    reply.header('connection', 'close')
    sendError(reply, proxyError('invalid_request', problem))
  })
}

/** Host (RFC 9112 §3.2: exactly one in HTTP/1.1, never several) and no fragment in the target. */
function targetProblem(raw: IncomingMessage): string | undefined {
  let hosts = 0
  const names = raw.rawHeaders
  for (let i = 0; i < names.length; i += 2) {
    const name = names[i] as string
    if (name.length === 4 && name.toLowerCase() === 'host') hosts++
  }
  if (hosts > 1) return 'The request has more than one Host header'
  if (hosts === 0 && raw.httpVersion === '1.1') return 'An HTTP/1.1 request needs a Host header'
  if (raw.url?.includes('#')) return 'The request target must not contain a #fragment'
  return undefined
}
