import { createHash } from 'node:crypto'

/**
 * The status page: one self-contained HTML document (inline CSS and JS, no external asset, no
 * build step). It polls /status.json every 1.5 s and redraws in place; every value is written as
 * text (textContent / SVG attributes), never as HTML, so a model or key name cannot inject markup.
 * The browser's own Basic-auth prompt covers team mode: fetch() reuses the page's credentials.
 */

export const STATUS_POLL_MS = 1500

const STYLE = `  :root { --closed: #1f8a3b; --half_open: #c98a00; --open: #c62828; --none: #777; --bar: #4a78c2; --err: #c62828; }
  body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fafafa; }
  h1 { font-size: 1.3rem; margin: 0 0 .25rem; }
  h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
  .meta { color: #666; font-size: .85rem; }
  .meta.stale { color: var(--open); font-weight: 600; }
  table { border-collapse: collapse; background: #fff; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
  th, td { padding: .35rem .7rem; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap; }
  th { font-weight: 600; font-size: .8rem; color: #555; background: #f3f3f5; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .breaker { display: inline-block; min-width: 5.5em; text-align: center; padding: .1rem .5rem; border-radius: 1rem; color: #fff; font-weight: 600; font-size: .8rem; }
  .breaker[data-state="closed"] { background: var(--closed); }
  .breaker[data-state="half_open"] { background: var(--half_open); }
  .breaker[data-state="open"] { background: var(--open); }
  .breaker[data-state="none"] { background: var(--none); }
  .spark { display: block; }
  .spark rect.r { fill: var(--bar); }
  .spark rect.e { fill: var(--err); }
  .cell { display: flex; align-items: center; gap: .4rem; }
  .empty { color: #888; font-style: italic; }
`

const SCRIPT = `(function () {
  'use strict'
  var POLL_MS = ${STATUS_POLL_MS}
  var SVG = 'http://www.w3.org/2000/svg'
  var WORDS = { closed: 'closed', half_open: 'half-open', open: 'open', none: 'no breaker' }
  var meta = document.getElementById('meta')

  function el(tag, text, className) {
    var node = document.createElement(tag)
    if (text !== undefined && text !== null) node.textContent = String(text)
    if (className) node.className = className
    return node
  }
  function ms(value) { return value === null || value === undefined ? '–' : value + ' ms' }

  /** Bars for one series (oldest first); errors drawn over requests in red; kind 'e' draws the series itself in red. */
  function sparkline(requests, errors, title, kind) {
    var width = 120, height = 22, n = requests.length, max = 1
    for (var i = 0; i < n; i++) if (requests[i] > max) max = requests[i]
    var svg = document.createElementNS(SVG, 'svg')
    svg.setAttribute('class', 'spark')
    svg.setAttribute('width', String(width))
    svg.setAttribute('height', String(height))
    var label = document.createElementNS(SVG, 'title')
    label.textContent = title
    svg.appendChild(label)
    var w = width / n
    for (var j = 0; j < n; j++) {
      var pairs = [[requests[j], kind || 'r'], [errors ? errors[j] : 0, 'e']]
      for (var k = 0; k < pairs.length; k++) {
        var value = pairs[k][0]
        if (!value) continue
        var h = Math.max(1, Math.round((value / max) * height))
        var rect = document.createElementNS(SVG, 'rect')
        rect.setAttribute('class', pairs[k][1])
        rect.setAttribute('x', (j * w).toFixed(1))
        rect.setAttribute('y', String(height - h))
        rect.setAttribute('width', Math.max(1, w - 0.5).toFixed(1))
        rect.setAttribute('height', String(h))
        svg.appendChild(rect)
      }
    }
    return svg
  }

  function countCell(value, series, errors, title, kind) {
    var td = el('td', null, 'num')
    var cell = el('div', null, 'cell')
    cell.appendChild(sparkline(series, errors, title, kind))
    cell.appendChild(el('span', value))
    td.appendChild(cell)
    return td
  }

  function renderModels(data) {
    var body = document.querySelector('#models tbody')
    body.replaceChildren()
    if (data.models.length === 0) {
      var empty = el('td', 'no traffic yet', 'empty')
      empty.colSpan = 10
      body.appendChild(el('tr')).appendChild(empty)
    }
    var span = data.windowSeconds / 60 + ' min'
    data.models.forEach(function (row) {
      var tr = el('tr')
      tr.dataset.model = row.model
      tr.appendChild(el('td', row.model))
      var state = row.breaker || 'none'
      var badge = el('span', WORDS[state] || state, 'breaker')
      badge.dataset.state = state
      var td = el('td')
      td.appendChild(badge)
      tr.appendChild(td)
      tr.appendChild(countCell(row.lastMinute.requests, row.series.requests, row.series.errors, 'requests (red: errors), last ' + span))
      tr.appendChild(countCell(row.lastMinute.errors, row.series.errors, null, 'errors, last ' + span, 'e'))
      tr.appendChild(countCell(row.lastMinute.retries, row.series.retries, null, 'retries, last ' + span))
      tr.appendChild(countCell(row.lastMinute.fallbacks, row.series.fallbacks, null, 'fallbacks, last ' + span))
      tr.appendChild(el('td', ms(row.latencyMs.p50), 'num'))
      tr.appendChild(el('td', ms(row.latencyMs.p95), 'num'))
      tr.appendChild(el('td', ms(row.ttftMs.p50), 'num'))
      tr.appendChild(el('td', ms(row.ttftMs.p95), 'num'))
      body.appendChild(tr)
    })
  }

  function renderErrors(data) {
    var body = document.querySelector('#errors tbody')
    body.replaceChildren()
    if (data.lastErrors.length === 0) {
      var empty = el('td', 'none', 'empty')
      empty.colSpan = 4
      body.appendChild(el('tr')).appendChild(empty)
    }
    data.lastErrors.forEach(function (error) {
      var tr = el('tr')
      tr.appendChild(el('td', error.time.replace('T', ' ').replace('Z', ' UTC')))
      tr.appendChild(el('td', error.model === null ? '–' : error.model))
      tr.appendChild(el('td', error.status, 'num'))
      tr.appendChild(el('td', error.code))
      body.appendChild(tr)
    })
  }

  function renderKeys(data) {
    var section = document.getElementById('keys-section')
    if (!data.keysToday) { section.hidden = true; return }
    section.hidden = false
    document.getElementById('keys-day').textContent = '(' + data.keysToday.day + ', UTC)'
    var body = document.querySelector('#keys tbody')
    body.replaceChildren()
    if (data.keysToday.keys.length === 0) {
      var empty = el('td', 'no requests today', 'empty')
      empty.colSpan = 4
      body.appendChild(el('tr')).appendChild(empty)
    }
    data.keysToday.keys.forEach(function (key) {
      var tr = el('tr')
      tr.appendChild(el('td', key.name))
      tr.appendChild(el('td', key.requests, 'num'))
      tr.appendChild(el('td', key.promptTokens, 'num'))
      tr.appendChild(el('td', key.completionTokens, 'num'))
      body.appendChild(tr)
    })
  }

  function poll() {
    fetch('/status.json', { cache: 'no-store', credentials: 'same-origin' })
      .then(function (response) {
        if (!response.ok) throw new Error('HTTP ' + response.status)
        return response.json()
      })
      .then(function (data) {
        renderModels(data)
        renderErrors(data)
        renderKeys(data)
        meta.className = 'meta'
        meta.textContent = 'updated ' + data.time.replace('T', ' ').replace('Z', ' UTC') +
          ' · per-minute counts over the last 60 s; bars: ' + data.bucketSeconds + ' s each over the last ' +
          data.windowSeconds / 60 + ' min; percentiles over the same window'
      })
      .catch(function (error) {
        meta.className = 'meta stale'
        meta.textContent = 'cannot reach /status.json (' + error.message + '); retrying'
      })
      .then(function () { setTimeout(poll, POLL_MS) })
  }
  poll()
})()
`

const hash = (text: string) => `'sha256-${createHash('sha256').update(text).digest('base64')}'`

/**
 * Sent with the page: only its own inline style and script run (by hash), it may fetch only its
 * own origin, and nothing may frame it.
 */
export const STATUS_PAGE_CSP = [
  "default-src 'none'",
  `style-src ${hash(STYLE)}`,
  `script-src ${hash(SCRIPT)}`,
  "connect-src 'self'",
  'img-src data:',
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ')

export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>toprouter-proxy status</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<h1>toprouter-proxy status</h1>
<div id="meta" class="meta">loading…</div>

<h2>Models</h2>
<table id="models">
  <thead><tr>
    <th>model</th><th>breaker</th>
    <th>requests/min</th><th>errors/min</th><th>retries/min</th><th>fallbacks/min</th>
    <th>latency p50</th><th>latency p95</th><th>TTFT p50</th><th>TTFT p95</th>
  </tr></thead>
  <tbody></tbody>
</table>

<h2>Last errors</h2>
<table id="errors">
  <thead><tr><th>time</th><th>model</th><th>status</th><th>code</th></tr></thead>
  <tbody></tbody>
</table>

<section id="keys-section" hidden>
<h2>Keys today <span id="keys-day" class="meta"></span></h2>
<table id="keys">
  <thead><tr><th>key</th><th>requests</th><th>prompt tokens</th><th>completion tokens</th></tr></thead>
  <tbody></tbody>
</table>
</section>

<script>${SCRIPT}</script>
</body>
</html>
`
