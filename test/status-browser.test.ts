import { existsSync, mkdirSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import t from 'tap'
import { request } from 'undici'
import { sendJson, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy, startTeamProxy } from './helpers/proxy.js'

/**
 * The status page in headless Chromium (Debian's `chromium`, driven by playwright-core; nothing is
 * installed at test time): the page is open, requests fail through the proxy until the model's
 * breaker opens, and the page — never reloaded — shows the row's breaker as "open" in red. A
 * screenshot is saved to test/artifacts/. Without /usr/bin/chromium: skipped outside CI, failed in
 * CI (.ci/run installs it).
 */

const CHROMIUM = '/usr/bin/chromium'
const MODEL = 'google/gemini-3.5-flash'
const OPEN_COLOUR = 'rgb(198, 40, 40)'
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), 'artifacts')
const SCREENSHOT = join(ARTIFACTS, 'status-breaker-open.png')

const ADMIN_KEY = 'admin-browser-0123456789abcdefghijk'
const LAUNCH = { executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] }
const missing = !existsSync(CHROMIUM)
const skip = missing && process.env.CI === undefined
if (missing && process.env.CI === undefined) {
  t.comment(`${CHROMIUM} is missing: skipping the status page's browser test (apt-get install chromium to run it)`)
}

t.test('the live page shows a breaker open, without a reload', { skip }, async (t) => {
  if (missing) {
    t.fail(`${CHROMIUM} is missing in CI: .ci/run should have installed Debian's chromium`)
    return
  }
  const upstream = await startFakeUpstream(t, (_req, res) =>
    sendJson(res, 500, { error: { message: 'internal', type: 'server_error', code: 500 } }),
  )
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { retry: { maxAttempts: 1 }, breaker: { volumeThreshold: 2, errorThresholdPercentage: 50, resetTimeoutMs: 60000 } },
  })
  const browser = await chromium.launch(LAUNCH)
  t.teardown(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 1280, height: 600 } })
  const consoleErrors: string[] = []
  page.on('console', (message) => {
    if (message.type() === 'error') consoleErrors.push(message.text())
  })
  let navigations = 0
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) navigations++
  })
  await page.goto(`${proxy.url}/status`)
  await page.waitForSelector('#meta:has-text("updated")', { timeout: 10000 })
  t.equal(await page.locator('#models tbody td.empty').textContent(), 'no traffic yet', 'no model before any request')

  // Failing requests until the breaker opens (it needs volumeThreshold failures in its window).
  for (let i = 0; i < 6 && proxy.breakers.states()[MODEL] !== 'open'; i++) {
    const res = await request(`${proxy.url}/chat/completions`, {
      method: 'POST',
      headers: { authorization: 'Bearer sk-client', 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] }),
    })
    await res.body.text()
  }
  t.equal(proxy.breakers.states()[MODEL], 'open', 'the breaker is open')

  const badge = page.locator(`#models tr[data-model="${MODEL}"] .breaker`)
  await page.waitForFunction(
    (model) => document.querySelector(`#models tr[data-model="${model}"] .breaker`)?.textContent === 'open',
    MODEL,
    { timeout: 10000 },
  )
  t.equal(await badge.textContent(), 'open', 'the row says open')
  t.equal(await badge.getAttribute('data-state'), 'open')
  t.equal(await badge.evaluate((node) => getComputedStyle(node).backgroundColor), OPEN_COLOUR, 'in the open colour')
  t.equal(navigations, 1, 'the page was never reloaded')
  t.same(consoleErrors, [], 'no console error (the content security policy lets the inline style and script run)')
  const errors = await page.locator('#errors tbody tr').count()
  t.ok(errors >= 2, `${errors} errors listed`)
  t.match(await page.locator('#errors tbody tr').first().textContent(), /500/, 'the newest error shows its status')

  mkdirSync(ARTIFACTS, { recursive: true })
  await page.screenshot({ path: SCREENSHOT, fullPage: true })
  t.ok(existsSync(SCREENSHOT) && statSync(SCREENSHOT).size > 0, `screenshot saved: ${SCREENSHOT}`)
})

t.test('team mode: the browser signs in with Basic (the admin key as password) and sees the keys today', { skip }, async (t) => {
  if (missing) {
    t.fail(`${CHROMIUM} is missing in CI: .ci/run should have installed Debian's chromium`)
    return
  }
  const upstream = await startFakeUpstream(t, (_req, res) =>
    sendJson(res, 200, {
      id: 'gen-1',
      object: 'chat.completion',
      created: 1760000000,
      model: MODEL,
      choices: [{ index: 0, message: { role: 'assistant', content: 'Hi' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
    }),
  )
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url, env: { TOPROUTER_PROXY_ADMIN_KEY: ADMIN_KEY } })
  const alice = await proxy.createKey({ name: 'alice' })
  const browser = await chromium.launch(LAUNCH)
  t.teardown(() => browser.close())

  // Without credentials the browser meets the Basic challenge; headless, with no one to ask, it gives up.
  const anonymous = await browser.newPage()
  await t.rejects(anonymous.goto(`${proxy.url}/status`), /ERR_INVALID_AUTH_CREDENTIALS/, 'the browser is asked for credentials')

  const context = await browser.newContext({ httpCredentials: { username: 'ops', password: ADMIN_KEY } })
  const page = await context.newPage()
  const answered = await page.goto(`${proxy.url}/status`)
  t.equal(answered?.status(), 200, 'with the admin key as password: the page')
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${alice.secret}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] }),
  })
  t.equal(res.statusCode, 200)
  await res.body.text()
  const row = page.locator('#keys tbody tr', { hasText: 'alice' })
  await row.waitFor({ timeout: 10000 })
  t.same(await row.locator('td').allTextContents(), ['alice', '1', '5', '2'], 'alice: one request, 5 + 2 tokens, polled in place')
  t.notOk((await page.content()).includes(alice.secret), 'no secret on the page')
})
