/** What the load generator sends: the same key, paths, headers and ~170 B chat body as an SDK would. */

/** The key local-mode clients send (the proxy replaces it with its own TOPROUTER_API_KEY, which is this too). */
export const API_KEY = 'sk-bench'
export const CHAT_PATH = '/chat/completions'
export const MODELS_PATH = '/models'

const MESSAGES = [
  { role: 'system', content: 'You are a concise assistant.' },
  { role: 'user', content: 'Say hello in one short sentence, please.' },
]

export const CHAT_BODY = JSON.stringify({ model: 'google/gemini-3.5-flash', messages: MESSAGES, max_tokens: 64 })
export const STREAM_BODY = JSON.stringify({ model: 'google/gemini-3.5-flash', messages: MESSAGES, max_tokens: 64, stream: true })

/** The headers of a chat POST and of a GET, both carrying one bearer key. */
export interface ClientHeaders {
  readonly chat: Readonly<Record<string, string>>
  readonly get: Readonly<Record<string, string>>
}

/** The headers an SDK sends with `apiKey`: `sk-bench` for local mode, a `tpk_…` gateway key for team mode. */
export function clientHeaders(apiKey: string): ClientHeaders {
  return {
    chat: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}`, accept: 'application/json' },
    get: { authorization: `Bearer ${apiKey}`, accept: 'application/json' },
  }
}

const LOCAL_HEADERS = clientHeaders(API_KEY)
export const REQUEST_HEADERS = LOCAL_HEADERS.chat
export const GET_HEADERS = LOCAL_HEADERS.get
