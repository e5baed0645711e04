import { createKeyService, type KeyService } from './keys.js'
import { openStore } from './store/open-store.js'
import type { TeamStore } from './store/store.js'
import { createUsageService, type UsageService } from './usage.js'

/** The one entry point the CLI, the admin API and the request path open: the store and both services over it. */
export interface TeamService {
  readonly keys: KeyService
  readonly usage: UsageService
  readonly store: TeamStore
  close(): Promise<void>
}

export interface OpenTeamServiceOptions {
  readonly cwd?: string
  readonly now?: () => Date
  readonly busyTimeoutMs?: number
  /** PostgreSQL: the pool's size (team.storePoolSize). */
  readonly poolSize?: number
}

export async function openTeamService(storeUrl: string, options: OpenTeamServiceOptions = {}): Promise<TeamService> {
  const store = await openStore(storeUrl, {
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    ...(options.busyTimeoutMs === undefined ? {} : { busyTimeoutMs: options.busyTimeoutMs }),
    ...(options.poolSize === undefined ? {} : { poolSize: options.poolSize }),
  })
  const keys = createKeyService({ keys: store.keys, ...(options.now === undefined ? {} : { now: options.now }) })
  return { keys, usage: createUsageService({ usage: store.usage, keys }), store, close: () => store.close() }
}
