import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import OpenAI from 'openai'
import t from 'tap'
import { chunkEvent, completion, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'

/**
 * The README's "Team gateway" set-up, run as written on the built CLI (`npm test` builds dist/
 * first): its four commands, in a fresh directory, against a fake TopRouter instead of the real
 * one (`--port 0 --upstream …` added to the start command, the key placeholder replaced). Then
 * the member's SDK calls, a SIGTERM (the drain writes the usage still waiting), and the usage
 * command reading it back.
 */

const ROOT = new URL('..', import.meta.url).pathname
const MAIN = join(ROOT, 'dist', 'main.js')
const run = promisify(execFile)
const README = readFileSync(join(ROOT, 'README.md'), 'utf8')

function teamSetupCommands(): string[] {
  const section = README.slice(README.indexOf('## Team gateway'), README.indexOf('## Docker / sidecar'))
  const block = /```sh\n([\s\S]*?)```/.exec(section)?.[1] ?? ''
  return block.split('\n').filter((line) => line.trim() !== '' && !line.startsWith('#'))
}

t.test("the README's four team commands work as written", async (t) => {
  const commands = teamSetupCommands()
  t.equal(commands.length, 4, 'enable (config + start), create a key, read the usage')
  const [writeConfig, startGateway, createKey, readUsage] = commands as [string, string, string, string]
  t.match(startGateway, /^TOPROUTER_API_KEY=\S+ node dist\/main\.js --config team\.yaml &$/)

  const upstream = await startFakeUpstream(t, async (_req, res, recorded) => {
    const body = JSON.parse(recorded.body.toString()) as { stream?: boolean; stream_options?: { include_usage?: boolean } }
    if (body.stream !== true) return sendJson(res, 200, completion())
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.write(chunkEvent('google/gemini-3.5-flash', 0, 'Hi', 'stop'))
    if (body.stream_options?.include_usage)
      res.write(`data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}\n\n`)
    res.end('data: [DONE]\n\n')
  })
  const dir = mkdtempSync(join(tmpdir(), 'toprouter-readme-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const env = { PATH: process.env.PATH ?? '' }
  const inDir = (command: string) => command.replaceAll('node dist/main.js', `node ${MAIN}`)

  await run('bash', ['-c', writeConfig], { cwd: dir, env })
  const started = startGateway.replace(/^TOPROUTER_API_KEY=\S+ /, '').replace(/ &$/, '')
  const gateway: ChildProcess = spawn('bash', ['-c', `exec ${inDir(started)} --port 0 --upstream ${upstream.url}`], {
    cwd: dir,
    env: { ...env, TOPROUTER_API_KEY: 'sk-readme-upstream-key' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => {
    if (gateway.exitCode === null) gateway.kill('SIGKILL')
  })
  let output = ''
  gateway.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()))
  gateway.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()))
  let url = ''
  for (let waited = 0; url === '' && waited < 15000; waited += 50) {
    const match = /listening on 127\.0\.0\.1:(\d+)/.exec(output)
    if (match) url = `http://127.0.0.1:${match[1]}`
    else await sleep(50)
  }
  t.ok(url, `the gateway started (${output.slice(0, 300)})`)

  const created = await run('bash', ['-c', inDir(createKey)], { cwd: dir, env })
  const secret = /tpk_[A-Za-z0-9_-]{43}/.exec(created.stdout)?.[0]
  t.ok(secret, 'the secret is printed once')

  const client = new OpenAI({ baseURL: url, apiKey: secret ?? '' })
  const answer = await client.chat.completions.create({ model: 'google/gemini-3.5-flash', messages: [{ role: 'user', content: 'Hello' }] })
  t.equal(answer.choices[0]?.message.content, 'Hello!')
  let streamed = ''
  for await (const chunk of await client.chat.completions.create({
    model: 'google/gemini-3.5-flash',
    stream: true,
    messages: [{ role: 'user', content: 'Hi' }],
  })) {
    t.ok(chunk.choices.length > 0, 'no usage chunk the member did not ask for')
    streamed += chunk.choices[0]?.delta?.content ?? ''
  }
  t.equal(streamed, 'Hi')
  const denied = await client.chat.completions.create({ model: 'anthropic/claude-4.6-sonnet', messages: [] }).catch((e: unknown) => e)
  t.ok(denied instanceof OpenAI.PermissionDeniedError, "the key's --models 'google/*' holds")

  gateway.kill('SIGTERM')
  const [code] = (await once(gateway, 'exit')) as [number | null]
  t.equal(code, 0, 'drained and exited 0')
  t.notMatch(output, /sk-readme-upstream-key/)
  t.notMatch(output, new RegExp(secret ?? 'no-secret'))

  const usage = await run('bash', ['-c', inDir(readUsage)], { cwd: dir, env })
  t.match(usage.stdout, /alice/, 'the usage table names the key')
  const json = await run('bash', ['-c', `${inDir(readUsage)} --json`], { cwd: dir, env })
  t.match(JSON.parse(json.stdout), {
    data: [{ group: 'alice', requests: 3, errors: 1, promptTokens: 9, completionTokens: 3, totalTokens: 12 }],
  })
})
