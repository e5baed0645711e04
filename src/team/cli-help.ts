/** The keys and usage subcommands, for --help; a leaf so main.ts can show it without loading the store. */
export const TEAM_CLI_HELP = `Team gateway keys and usage (on the store named by team.storeUrl; no server needed):
  toprouter-proxy keys create --name NAME [--rpm N] [--tpm N] [--max-concurrent N] [--budget-tokens N]
      [--budget-usd X] [--budget-period day|week|month|total] [--models 'google/*,anthropic/*'] [--expires 30d|2027-01-01]
  toprouter-proxy keys list
  toprouter-proxy keys show NAME|ID
  toprouter-proxy keys update NAME|ID [--name NEW] [same flags as create; --expires never clears the expiry]
  toprouter-proxy keys revoke NAME|ID
  toprouter-proxy usage [--key NAME|ID] [--since 7d|2026-12-01] [--until …] [--by key|model|day]
      (--since inclusive, --until exclusive; a date is UTC midnight; --by key is the default)
  Each takes --config <path> and --json (the record, or {"data":[…]} for lists and usage).
  Exit codes: 0 done, 1 no such key, 2 bad flags or values.
`
