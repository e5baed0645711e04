import type { IncomingHttpHeaders } from 'node:http'
import { proxyError } from './errors.js'
import { forwardableRequestHeaders, type HeaderMap } from './http-headers.js'

/**
 * Who the upstream sees: the gateway's own key (`TOPROUTER_API_KEY`) replaces whatever the client
 * sent; without one, the client's `Authorization` goes through, and a request with neither is
 * refused before anything is sent. This is the door a member key's check will stand at.
 */

export interface UpstreamAuth {
  /** Headers for the upstream request, or a thrown 401 `missing_api_key`. */
  headersFor(incoming: IncomingHttpHeaders, requestId: string, hasBody: boolean): HeaderMap
  /** True when every client shares the gateway's key (so they may share a cached `/models`). */
  readonly sharedKey: boolean
}

export function createUpstreamAuth(apiKey: string | undefined): UpstreamAuth {
  const configuredAuthorization = apiKey === undefined ? undefined : `Bearer ${apiKey}`
  return {
    sharedKey: configuredAuthorization !== undefined,
    headersFor(incoming, requestId, hasBody) {
      const headers = forwardableRequestHeaders(incoming)
      if (configuredAuthorization !== undefined) {
        headers.authorization = configuredAuthorization
        delete headers['x-api-key']
      } else if (headers.authorization === undefined || headers.authorization === '') {
        throw proxyError('missing_api_key')
      }
      // Identity keeps success bodies byte-identical and SSE readable event by event.
      headers['accept-encoding'] = 'identity'
      headers['x-request-id'] = requestId
      if (hasBody) headers['content-type'] = 'application/json'
      return headers
    },
  }
}
