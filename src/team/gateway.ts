import type { Config } from '../config.js'
import { type ProxyError, proxyError } from '../errors.js'
import { abortFailure } from '../failures.js'
import type { RequestSignal } from '../request-clock.js'
import type { StreamEnding } from '../streaming/sse.js'
import { budgetWindow } from './budget.js'
import { costUsd, type ModelPrice, nextPeriodStartMs, priceOf, pricesFromModelList } from './cost.js'
import type { KeyCache } from './key-cache.js'
import { effectiveLimits, hashSecret, type KeyLimits, type KeyRecord, keyStatus, SECRET_PREFIX } from './keys.js'
import type { Admission, KeyLimiter, Permit, RateLimitHeaders } from './limiter.js'
import { modelAllowed, modelListFor } from './model-allow.js'
import type { TeamMetrics } from './team-metrics.js'
import type { UsageEnding, UsageRecord } from './usage.js'
import { type ChatBody, StreamUsageTap, type TokenUsage, usageOfBody, withUsageRequested } from './usage-tokens.js'
import type { UsageWriter } from './usage-writer.js'

/**
 * The team gateway on the request path: who the member is (their gateway key, from memory), what
 * they may do (allow-list, budget, rpm / tpm / concurrency), and, when the request ends, what it
 * cost (one usage record). Each request gets a TeamRequest that the route drives in order and the
 * request log finishes; none of it knows the HTTP framework, and the store is only reached through
 * the key cache and the batched usage writer.
 */

export interface TeamGatewayLog {
  warn(details: object, message: string): void
}

export interface TeamGatewayDeps {
  readonly team: Config['team']
  /** The key a secret's hash belongs to, from the store (behind the cache). */
  readonly findKeyBySecretHash: (secretHash: string) => Promise<KeyRecord | undefined>
  readonly keyCache: KeyCache<KeyRecord>
  readonly limiter: KeyLimiter
  readonly usage: UsageWriter<UsageRecord>
  readonly metrics: TeamMetrics
  readonly log: TeamGatewayLog
  /** Monotonic ms, the request clock's. */
  readonly now: () => number
  readonly wallClockNow: () => number
}

export interface TeamGateway {
  /** Starts a chat request's team side; `receivedAtMs` is monotonic. */
  begin(requestId: string, receivedAtMs: number): TeamRequest
  /** The active key behind an Authorization header, or the refusal thrown (for `/models`). */
  authenticate(authorization: string | string[] | undefined): Promise<KeyRecord>
  /** Prices from a `/models` body, used when `team.prices` has none for a model. */
  learnPrices(modelListBody: Buffer): void
  /** A `/models` body with only what the key may use. */
  modelListFor(key: KeyRecord, modelListBody: Buffer): Buffer
  mayUse(key: KeyRecord, model: string): boolean
  /** A key was updated or revoked: the next request reads it again. */
  forgetKey(keyId: string): void
  /** Drops every cached key (the key-change channel was away: changes may have been missed). */
  forgetAllKeys(): void
  /**
   * A config reload: `team.defaults` and `team.prices` apply to requests that begin from now on
   * (a request in flight keeps the ones it began with); the other team keys need a restart.
   */
  reconfigure(team: Config['team']): void
}

/** What the request log tells a finished request. */
export interface RequestEnd {
  readonly status: number
  readonly clientGone: boolean
  readonly servedBy: string | undefined
  readonly attempts: number
}

const ENDING_OF_STREAM: Readonly<Record<StreamEnding, UsageEnding>> = {
  done: 'complete',
  done_added: 'complete',
  cut: 'cut',
  stalled: 'stalled',
  client_gone: 'client_closed',
  drained: 'error',
}

export function createTeamGateway(deps: TeamGatewayDeps): TeamGateway {
  const { keyCache, metrics, log, now, wallClockNow } = deps
  let team = deps.team
  let listedPrices: ReadonlyMap<string, ModelPrice> = new Map()
  const unpricedWarned = new Set<string>()

  /** The key from memory when the cache has it (no promise on the hot path), else from the store. */
  function authenticate(authorization: string | string[] | undefined): KeyRecord | Promise<KeyRecord> {
    const secret = bearerSecret(authorization)
    if (secret === undefined) throw proxyError('invalid_api_key', 'No gateway key: send Authorization: Bearer tpk_…')
    if (!secret.startsWith(SECRET_PREFIX)) throw proxyError('invalid_api_key')
    const secretHash = hashSecret(secret)
    const cached = keyCache.fresh(secretHash)
    if (cached !== undefined) return knownKey(cached.key)
    return lookUp(secretHash)
  }

  async function lookUp(secretHash: string): Promise<KeyRecord> {
    let key: KeyRecord | undefined
    try {
      key = await keyCache.lookup(secretHash, () => deps.findKeyBySecretHash(secretHash))
    } catch (error: unknown) {
      // An unknown key is not the member's fault when the store cannot be asked: not a 401.
      log.warn({ err: error }, 'key store unavailable; a key not in the cache cannot be checked')
      throw proxyError(
        'service_unavailable',
        'The gateway cannot check this key right now (its key store is unavailable); try again shortly',
      )
    }
    return knownKey(key)
  }

  function knownKey(key: KeyRecord | undefined): KeyRecord {
    if (key === undefined) throw proxyError('invalid_api_key')
    return key
  }

  function refuseInactive(key: KeyRecord): void {
    const status = keyStatus(key, new Date(wallClockNow()))
    if (status === 'revoked') throw proxyError('key_revoked')
    if (status === 'expired') throw proxyError('key_expired', `This gateway key expired at ${key.expiresAt}`)
  }

  function priceFor(model: string, budgeted: boolean, prices: Config['team']['prices']): ModelPrice | undefined {
    const price = priceOf(model, prices, listedPrices)
    if (price === undefined && budgeted && !unpricedWarned.has(model)) {
      unpricedWarned.add(model)
      log.warn({ model }, 'no price known for this model: its requests are recorded with costUsd null and do not count toward USD budgets')
    }
    return price
  }

  class ChatTeamRequest implements TeamRequest {
    key: KeyRecord | undefined = undefined
    modelRequested = ''
    stream = false
    rateLimitHeaders: RateLimitHeaders | undefined = undefined
    private tap: StreamUsageTap | undefined = undefined
    private bodyUsage: TokenUsage | undefined = undefined
    private firstEventAtMs: number | undefined = undefined
    private usageInjected = false
    private permit: Permit | undefined = undefined
    private limits: KeyLimits | undefined = undefined
    private readonly requestId: string
    private readonly receivedAtMs: number
    private readonly receivedAtWallMs: number
    /** The team settings the request began with: a reload does not change them under it. */
    private readonly team = team
    private finished = false

    constructor(requestId: string, receivedAtMs: number) {
      this.requestId = requestId
      this.receivedAtMs = receivedAtMs
      this.receivedAtWallMs = wallClockNow()
    }

    authenticate(authorization: string | string[] | undefined): Promise<void> | undefined {
      const found = authenticate(authorization)
      if (found instanceof Promise) return found.then((key) => this.accept(key))
      this.accept(found)
      return undefined
    }

    private accept(key: KeyRecord): void {
      // From here the request is the key's: even a refusal below is recorded against it.
      this.key = key
      try {
        refuseInactive(key)
      } catch (refusal: unknown) {
        throw this.refuse(refusal as ProxyError)
      }
      this.limits = effectiveLimits(key, this.team.defaults)
    }

    readonly allows = (model: string): boolean => this.key !== undefined && modelAllowed(this.key, model)

    allowModel(model: string, stream: boolean): void {
      this.modelRequested = model
      this.stream = stream
      if (!this.allows(model)) throw this.refuse(proxyError('model_not_allowed', `This gateway key may not use the model ${model}`))
    }

    async admit(chat: ChatBody, signal: RequestSignal, deadlineAtMs: number): Promise<void> {
      const key = this.key as KeyRecord
      const admission = await deps.limiter.admit({
        keyId: key.id,
        limits: this.limits as KeyLimits,
        estimatedTokens: estimatedTokens(chat.body.length, chat.parsed),
        signal,
        deadlineAtMs,
        budget: budgetWindow(key, this.receivedAtWallMs),
      })
      if (admission.ok) {
        if (this.finished) {
          // The client left while the admission was on its way (a Redis round trip): the request
          // has been finished and recorded already, so nothing else would free what it was given.
          admission.permit.settle(0)
          admission.permit.release()
          throw abortFailure(signal.reason ?? 'client_gone')
        }
        this.permit = admission.permit
        this.rateLimitHeaders = admission.permit.headers
        return
      }
      if (admission.limit === 'aborted') throw abortFailure(signal.reason ?? 'client_gone')
      if (admission.limit === 'budget') {
        throw this.refuse(budgetRefusal(key, admission.unit, admission.spent, admission.budget, this.receivedAtWallMs))
      }
      if (admission.limit === 'unavailable') {
        const why =
          admission.what === 'limits'
            ? "The gateway cannot check this key's limits right now (the limits store is unavailable); try again shortly"
            : "The gateway cannot check this key's budget right now (the usage store is unavailable); try again shortly"
        throw this.refuse(proxyError('service_unavailable', why))
      }
      throw this.refuse(limitRefusal(admission, this.limits as KeyLimits))
    }

    upstreamBody(chat: ChatBody): ChatBody | undefined {
      if (!this.stream) return undefined
      const asked = withUsageRequested(chat)
      this.usageInjected = asked !== undefined
      return asked
    }

    answered(body: Buffer | undefined): void {
      if (body !== undefined) this.bodyUsage = usageOfBody(body)
    }

    streamTap(): StreamUsageTap {
      this.firstEventAtMs = now()
      this.tap = new StreamUsageTap(this.usageInjected)
      return this.tap
    }

    finish(end: RequestEnd, streamEnding: StreamEnding | undefined): void {
      const key = this.key
      if (key === undefined || this.finished) return
      this.finished = true
      const usage = this.stream ? this.tap?.usage : this.bodyUsage
      const servedBy = end.servedBy ?? null
      const cost = servedBy === null ? null : costUsd(usage, priceFor(servedBy, key.budgetUsd !== null, this.team.prices))
      const totalTokens = usage?.totalTokens ?? null
      this.permit?.settle(totalTokens ?? undefined, cost)
      this.permit?.release()
      const endedAtMs = now()
      deps.usage.record({
        time: new Date(this.receivedAtWallMs),
        keyId: key.id,
        requestId: this.requestId,
        modelRequested: this.modelRequested,
        modelServed: servedBy,
        status: end.status,
        stream: this.stream,
        ending: endingOf(end, streamEnding),
        attempts: end.attempts,
        promptTokens: usage?.promptTokens ?? null,
        completionTokens: usage?.completionTokens ?? null,
        totalTokens,
        costUsd: cost,
        latencyMs: Math.max(0, Math.round(endedAtMs - this.receivedAtMs)),
        ttftMs: this.firstEventAtMs === undefined ? null : Math.max(0, Math.round(this.firstEventAtMs - this.receivedAtMs)),
      })
      metrics.request(key.name, end.status, { prompt: usage?.promptTokens ?? null, completion: usage?.completionTokens ?? null })
    }

    private refuse(error: ProxyError): ProxyError {
      if (this.key !== undefined) metrics.refusal(this.key.name, error.code)
      return error
    }
  }

  return {
    begin: (requestId, receivedAtMs) => new ChatTeamRequest(requestId, receivedAtMs),
    async authenticate(authorization) {
      const key = await authenticate(authorization)
      refuseInactive(key)
      return key
    },
    learnPrices(body) {
      const prices = pricesFromModelList(body)
      if (prices.size > 0) listedPrices = prices
    },
    modelListFor,
    mayUse: modelAllowed,
    forgetKey: (keyId) => keyCache.forget(keyId),
    forgetAllKeys: () => keyCache.forgetAll(),
    reconfigure(next) {
      team = next
    },
  }
}

/** One chat request's team side, driven by the route in this order and finished by the request log. */
export interface TeamRequest {
  /** Set once the gateway key is known (even when it is then refused). */
  readonly key: KeyRecord | undefined
  /** The key's own `x-ratelimit-*`, replacing the upstream's; set once admitted. */
  readonly rateLimitHeaders: RateLimitHeaders | undefined
  /** Undefined when the key was in memory (the usual case), else a promise of the store's answer. */
  authenticate(authorization: string | string[] | undefined): Promise<void> | undefined
  /** Throws `model_not_allowed` unless the key may use the primary model. */
  allowModel(model: string, stream: boolean): void
  /** For the fallback chain: a model the key may not use is skipped. */
  readonly allows: (model: string) => boolean
  /** Budget, then rpm / tpm / concurrency (possibly waiting in the key's queue); throws the refusal. */
  admit(chat: ChatBody, signal: RequestSignal, deadlineAtMs: number): Promise<void>
  /**
   * The request as the upstream must get it, or undefined when it stays the client's: a stream
   * asks for `include_usage` when the client did not.
   */
  upstreamBody(chat: ChatBody): ChatBody | undefined
  /** A JSON answer was committed: its `usage` is the request's. */
  answered(body: Buffer | undefined): void
  /** A stream is being committed (its first event now): the tap its chunks pass through. */
  streamTap(): StreamUsageTap
  /** The request has ended: settle its limits and record its usage. Idempotent. */
  finish(end: RequestEnd, streamEnding: StreamEnding | undefined): void
}

/** The tpm reservation: prompt bytes / 4 plus the most the answer may use. */
export function estimatedTokens(bodyBytes: number, parsed: Readonly<Record<string, unknown>>): number {
  const most = parsed.max_completion_tokens ?? parsed.max_tokens
  return Math.ceil(bodyBytes / 4) + (typeof most === 'number' && Number.isFinite(most) && most > 0 ? Math.ceil(most) : 0)
}

function bearerSecret(authorization: string | string[] | undefined): string | undefined {
  if (typeof authorization !== 'string') return undefined
  return /^Bearer\s+(\S+)\s*$/i.exec(authorization)?.[1]
}

function endingOf(end: RequestEnd, streamEnding: StreamEnding | undefined): UsageEnding {
  if (streamEnding !== undefined) return ENDING_OF_STREAM[streamEnding]
  if (end.clientGone || end.status === 499) return 'client_closed'
  return end.status < 400 ? 'complete' : 'error'
}

const LIMIT_WORDS = { rpm: 'requests per minute', tpm: 'tokens per minute', concurrency: 'requests at once' } as const

function limitRefusal(admission: Extract<Admission, { retryAfterMs: number }>, limits: KeyLimits): ProxyError {
  const allowed = admission.limit === 'rpm' ? limits.rpm : admission.limit === 'tpm' ? limits.tpm : limits.maxConcurrent
  return proxyError(
    'key_rate_limit_exceeded',
    `Over this gateway key's limit of ${allowed} ${LIMIT_WORDS[admission.limit]}; retry in ${admission.retryAfterSeconds} s`,
    { ...admission.headers, 'retry-after': String(admission.retryAfterSeconds) },
  )
}

function budgetRefusal(key: KeyRecord, unit: 'tokens' | 'usd', spent: number, budget: number, atMs: number): ProxyError {
  const amount = unit === 'tokens' ? `${spent} of ${budget} tokens` : `$${spent.toFixed(4)} of $${budget}`
  const period = key.budgetPeriod
  const resets = period === 'total' ? 'it does not reset' : `it resets at ${new Date(nextPeriodStartMs(period, atMs)).toISOString()}`
  return proxyError('budget_exceeded', `This gateway key's ${PERIOD_WORDS[period]} budget is spent (${amount}); ${resets}`)
}

const PERIOD_WORDS = { day: 'daily', week: 'weekly', month: 'monthly', total: 'total' } as const
