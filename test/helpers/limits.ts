import { RequestSignal } from '../../src/request-clock.js'
import type { AdmitRequest, KeyLimits } from '../../src/team/limiter.js'

/** An admission request for the limiter tests: key `key_a`, the given limits, a minute to go. */

export const now = () => performance.now()
export const NO_LIMITS: KeyLimits = { rpm: 0, tpm: 0, maxConcurrent: 0 }

export function ask(limits: Partial<KeyLimits>, overrides: Partial<AdmitRequest> = {}): AdmitRequest {
  return {
    keyId: 'key_a',
    limits: { ...NO_LIMITS, ...limits },
    estimatedTokens: 0,
    signal: new RequestSignal(),
    deadlineAtMs: now() + 60_000,
    ...overrides,
  }
}
