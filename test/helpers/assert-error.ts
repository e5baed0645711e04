import type { Test } from 'tap'
import type { Dispatcher } from 'undici'

export interface ExpectedError {
  status: number
  type?: string
  code?: string
  message?: string | RegExp
}

/**
 * Reads an error response and checks the contract every proxy error obeys: the status, JSON
 * content type, a correct content-length, the request id, `x-should-retry: false`, and a body of
 * exactly {"error":{"message","type","code"}} with three strings.
 */
export async function expectErrorShape(t: Test, res: Dispatcher.ResponseData, expected: ExpectedError) {
  const text = await res.body.text()
  t.equal(res.statusCode, expected.status, `status ${expected.status}`)
  t.match(res.headers['content-type'], /^application\/json/, 'JSON content type')
  t.equal(Number(res.headers['content-length']), Buffer.byteLength(text), 'content-length matches the body')
  t.ok(res.headers['x-request-id'], 'x-request-id present')
  t.equal(res.headers['x-should-retry'], 'false', 'x-should-retry: false')
  const body = JSON.parse(text) as { error: Record<string, unknown> }
  t.same(Object.keys(body), ['error'], 'only an error key')
  t.same(Object.keys(body.error).sort(), ['code', 'message', 'type'], 'exactly message, type, code')
  for (const key of ['message', 'type', 'code']) t.equal(typeof body.error[key], 'string', `${key} is a string`)
  if (expected.type !== undefined) t.equal(body.error.type, expected.type, 'type')
  if (expected.code !== undefined) t.equal(body.error.code, expected.code, 'code')
  if (typeof expected.message === 'string') t.equal(body.error.message, expected.message, 'message')
  if (expected.message instanceof RegExp) t.match(body.error.message, expected.message, 'message')
  t.ok(!/<html|<body|<h1|\bat .*\.(js|ts):\d+/i.test(text), 'no HTML and no stack trace')
  return body.error as { message: string; type: string; code: string }
}
