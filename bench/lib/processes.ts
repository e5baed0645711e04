import { type ChildProcess, spawn } from 'node:child_process'
import { closeSync, openSync, readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { API_KEY } from './requests.js'

/** A process the bench started and measures: its pid for /proc, its URL for the load. */
export interface BenchProcess {
  readonly name: string
  readonly child: ChildProcess
  readonly pid: number
  readonly url: string
  /** What it wrote to stderr so far (the first 64 KB), for error messages. */
  readonly stderr: () => string
}

export interface HelperCommand {
  readonly name: string
  /** A transpiled bench helper (upstream or floor), run on bare `node`. */
  readonly script: string
  readonly args: readonly string[]
  readonly cwd: string
}

/** Starts a bench helper that prints `{"port":N}` as its first stdout line. */
export async function startHelper(command: HelperCommand): Promise<BenchProcess> {
  const { name } = command
  const child = spawn(process.execPath, [command.script, ...command.args], { cwd: command.cwd, stdio: ['ignore', 'pipe', 'pipe'] })
  const stderr = collectStderr(child)
  const port = await new Promise<number>((resolve, reject) => {
    let buffered = ''
    const timer = setTimeout(() => reject(new Error(`${name} did not start within 15 s: ${stderr()}`)), 15_000)
    child.once('exit', (code) => reject(new Error(`${name} exited with ${String(code)} before listening: ${stderr()}`)))
    child.stdout?.setEncoding('utf8')
    child.stdout?.on('data', (chunk: string) => {
      buffered += chunk
      const newline = buffered.indexOf('\n')
      if (newline === -1) return
      clearTimeout(timer)
      try {
        resolve((JSON.parse(buffered.slice(0, newline)) as { port: number }).port)
      } catch (err: unknown) {
        reject(err as Error)
      }
    })
  })
  return { name, child, pid: pidOf(child), url: `http://127.0.0.1:${port}`, stderr }
}

export interface ProxyCommand {
  /** The main.js of the dist/ snapshot. */
  readonly main: string
  readonly cwd: string
}

/** What the soak adds to the proxy's command line: node flags before main.js (its `--import` probe) and environment. */
export interface ProxyExtras {
  readonly nodeArgs?: readonly string[]
  readonly env?: Readonly<Record<string, string>>
}

/** Starts the real proxy (default config unless `configPath`); its pino log goes to `logFile`. */
export async function startProxy(
  command: ProxyCommand,
  upstreamUrl: string,
  logFile: string,
  configPath?: string,
  extras?: ProxyExtras,
): Promise<BenchProcess> {
  const env: NodeJS.ProcessEnv = { ...process.env }
  // The store and Redis URLs too: from the environment they would override the team targets' config.
  for (const name of [
    'HOST',
    'PORT',
    'TOPROUTER_BASE_URL',
    'TOPROUTER_PROXY_CONFIG',
    'TOPROUTER_PROXY_STORE_URL',
    'TOPROUTER_PROXY_REDIS_URL',
    'LOG_LEVEL',
    'NODE_OPTIONS',
  ])
    delete env[name]
  env.LOG_LEVEL = 'info'
  env.TOPROUTER_API_KEY = API_KEY
  Object.assign(env, extras?.env)
  const logFd = openSync(logFile, 'w')
  const args = [...(extras?.nodeArgs ?? []), command.main, '--port', '0', '--upstream', upstreamUrl]
  if (configPath !== undefined) args.push('--config', configPath)
  const child = spawn(process.execPath, args, { cwd: command.cwd, env, stdio: ['ignore', logFd, 'pipe'] })
  closeSync(logFd)
  const stderr = collectStderr(child)
  let exited: number | null | undefined
  child.once('exit', (code) => {
    exited = code
  })
  const deadline = Date.now() + 15_000
  while (Date.now() < deadline) {
    if (exited !== undefined) throw new Error(`proxy exited with ${String(exited)} before listening: ${stderr()}`)
    for (const line of readFileSync(logFile, 'utf8').split('\n')) {
      if (!line.includes('listening')) continue
      const entry = JSON.parse(line) as { port?: number; msg?: string }
      if (typeof entry.port === 'number' && entry.msg?.startsWith('toprouter-proxy listening') === true) {
        return { name: 'proxy', child, pid: pidOf(child), url: `http://127.0.0.1:${entry.port}`, stderr }
      }
    }
    await sleep(50)
  }
  child.kill('SIGKILL')
  throw new Error(`proxy did not log its listening line within 15 s: ${stderr()}`)
}

/** SIGTERM, then SIGKILL if it has not exited 10 s later. */
export async function stop(proc: BenchProcess): Promise<void> {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => proc.child.once('exit', () => resolve()))
  proc.child.kill('SIGTERM')
  const giveUp = new AbortController()
  const killed = await Promise.race([exited.then(() => false), sleep(10_000, true, { signal: giveUp.signal }).catch(() => false)])
  giveUp.abort()
  if (killed) {
    proc.child.kill('SIGKILL')
    await exited
  }
}

function collectStderr(child: ChildProcess): () => string {
  let text = ''
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (chunk: string) => {
    if (text.length < 64 * 1024) text += chunk
  })
  return () => text
}

function pidOf(child: ChildProcess): number {
  if (child.pid === undefined) throw new Error('spawn failed: no pid')
  return child.pid
}
