import { spawn } from 'node:child_process'
import { createServer } from 'node:net'
import type { BenchProcess } from './processes.js'

/**
 * The `team-redis` target's own redis-server: a child process on a free loopback port, no
 * persistence (`--save "" --appendonly no`), its working directory the target's temporary one. It
 * serves nothing but that target's proxy and the bench's probe, so the command counts of
 * `INFO commandstats` are the proxy's alone. Stopped (SIGTERM, by processes.ts `stop`) when the
 * target ends.
 */

const START_TIMEOUT_MS = 10_000
/** A port found free may be taken before redis-server binds it; then another is tried. */
const ATTEMPTS = 3

export async function startRedisServer(dir: string): Promise<BenchProcess> {
  let lastError: Error | undefined
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    try {
      return await startOnce(await freePort(), dir)
    } catch (err: unknown) {
      lastError = err as Error
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') break
    }
  }
  throw lastError ?? new Error('redis-server did not start')
}

async function startOnce(port: number, dir: string): Promise<BenchProcess> {
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--logfile', '']
  const child = spawn('redis-server', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  const collect = (chunk: string) => {
    if (output.length < 64 * 1024) output += chunk
  }
  child.stdout.setEncoding('utf8')
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', collect)
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`redis-server did not get ready within ${START_TIMEOUT_MS} ms: ${output}`))
    }, START_TIMEOUT_MS)
    child.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      if (err.code === 'ENOENT')
        err.message = 'redis-server is not on PATH: the team-redis target needs it (e.g. apt-get install redis-server)'
      reject(err)
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`redis-server exited with ${String(code)} before it was ready: ${output}`))
    })
    child.stdout.on('data', (chunk: string) => {
      collect(chunk)
      if (output.includes('Ready to accept connections')) {
        clearTimeout(timer)
        resolve()
      }
    })
  })
  if (child.pid === undefined) throw new Error('spawn of redis-server failed: no pid')
  return { name: 'redis-server', child, pid: child.pid, url: `redis://127.0.0.1:${port}`, stderr: () => output }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      const port = typeof address === 'object' && address !== null ? address.port : 0
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('no free port'))))
    })
  })
}
