/** What the load generator sends: the same key, paths, headers and ~170 B chat body as an SDK would. */

export const API_KEY = 'sk-bench'
export const CHAT_PATH = '/chat/completions'
export const MODELS_PATH = '/models'

const MESSAGES = [
  { role: 'system', content: 'You are a concise assistant.' },
  { role: 'user', content: 'Say hello in one short sentence, please.' },
]

export const CHAT_BODY = JSON.stringify({ model: 'google/gemini-3.5-flash', messages: MESSAGES, max_tokens: 64 })
export const STREAM_BODY = JSON.stringify({ model: 'google/gemini-3.5-flash', messages: MESSAGES, max_tokens: 64, stream: true })
export const REQUEST_HEADERS = { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}`, accept: 'application/json' }
export const GET_HEADERS = { authorization: `Bearer ${API_KEY}`, accept: 'application/json' }
