/**
 * What the keys and usage service refuses, by kind: the CLI prints the message (exit 2, or 1 when
 * nothing was found); the admin API will map the kinds to 400, 404 and 409.
 */
export type TeamErrorKind = 'invalid' | 'not_found' | 'conflict'

export class TeamError extends Error {
  readonly kind: TeamErrorKind
  constructor(kind: TeamErrorKind, message: string) {
    super(message)
    this.name = 'TeamError'
    this.kind = kind
  }
}
