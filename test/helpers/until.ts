import { setTimeout as sleep } from 'node:timers/promises'

/** Polls until `condition` holds, every `everyMs`; false once `timeoutMs` has passed without it. */
export async function until(condition: () => Promise<boolean> | boolean, timeoutMs = 5_000, everyMs = 10): Promise<boolean> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    if (await condition()) return true
    if (performance.now() > deadline) return false
    await sleep(everyMs)
  }
}
