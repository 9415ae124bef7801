// posthog-js loaded FROM a gateway in reverse-proxy mode (the edge), in headless Debian Chromium, on a page
// served from a local static server (another origin than the edge). The page loads `<edge>/static/array.js`
// with its SRI `integrity`, inits with `api_host: <edge>` and session recording on (the remote config comes
// through the edge), captures events, identifies, moves the mouse and clicks (an idle session is not
// flushed) until a replay batch has been answered, and leaves the page (so the $pageleave beacon goes out).
// Every request carries a spoofed `X-Forwarded-For: 203.0.113.9`, as a client could send. It reports, as one JSON object on stdout, every event the SDK handed to its
// transport (from `before_send`), every request the page made (status, redirect, CORS header, and for
// `/static/` answers the sha256 of the bytes the browser got) and console errors.
//
// usage: node run-posthog-js-proxy.mjs <edge-url> <token> <array.js integrity>
import { createHash } from 'node:crypto'

import { launchChromium, servePage } from './browser.mjs'

const [edge, token, integrity] = process.argv.slice(2)
if (!edge || !token || !integrity) {
  console.error('usage: node run-posthog-js-proxy.mjs <edge-url> <token> <array.js integrity>')
  process.exit(2)
}

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>gateway proxy e2e</title>
<script src="${edge}/static/array.js" integrity="${integrity}" crossorigin="anonymous"></script>
<script>
  window.__sent = []
  posthog.init(${JSON.stringify(token)}, {
    api_host: ${JSON.stringify(edge)},
    opt_out_useragent_filter: true, // headless Chrome is otherwise dropped as a bot
    request_queue_config: { flush_interval_ms: 250 },
    disable_session_recording: false,
    autocapture: false,
    before_send: (event) => {
      const seen = { uuid: event.uuid, event: event.event, distinct_id: event.properties.distinct_id }
      window.__sent.push(seen)
      console.log('SENT ' + JSON.stringify(seen)) // survives navigation, unlike window.__sent
      return event
    },
  })
</script></head><body><h1>ok</h1><p id="text">some text to record</p><button id="b">click</button></body></html>`

const { origin, close: closeServer } = await servePage({ '/index.html': ['text/html; charset=utf-8', page] })
const { context, close: closeBrowser } = await launchChromium()

const sent = new Map()
const requests = []
const pending = []
const consoleErrors = []
try {
  const tab = await context.newPage()
  // A client-supplied X-Forwarded-For that the edge (trusting no proxy hop) must not believe or pass on.
  await context.setExtraHTTPHeaders({ 'X-Forwarded-For': '203.0.113.9' })
  tab.on('console', (message) => {
    if (message.text().startsWith('SENT ')) {
      const event = JSON.parse(message.text().slice(5))
      sent.set(event.uuid, event)
    } else if (message.type() === 'error') {
      consoleErrors.push(message.text())
    }
  })
  tab.on('pageerror', (error) => consoleErrors.push(String(error)))
  tab.on('requestfinished', (request) => {
    if (!request.url().startsWith(edge)) return
    pending.push((async () => {
      const response = await request.response()
      const entry = {
        method: request.method(),
        url: request.url(),
        resourceType: request.resourceType(),
        contentType: request.headers()['content-type'] ?? null,
        forwardedFor: (await request.allHeaders())['x-forwarded-for'] ?? null,
        redirectedFrom: request.redirectedFrom()?.url() ?? null,
        status: response?.status() ?? null,
        allowOrigin: response ? await response.headerValue('access-control-allow-origin') : null,
        location: response ? await response.headerValue('location') : null,
        xCache: response ? await response.headerValue('x-cache') : null,
      }
      if (response && new URL(request.url()).pathname.startsWith('/static/')) {
        entry.sha256 = createHash('sha256').update(await response.body()).digest('hex')
      }
      requests.push(entry)
    })())
  })
  tab.on('requestfailed', (request) => {
    if (request.url().startsWith(edge)) {
      requests.push({ method: request.method(), url: request.url(), failure: request.failure()?.errorText })
    }
  })

  await tab.goto(`${origin}/index.html`)
  await tab.waitForFunction(() => window.posthog && window.posthog.__loaded)
  await tab.evaluate(() => {
    for (let i = 0; i < 3; i++) window.posthog.capture('js_event', { index: i, nested: { ok: true } })
    window.posthog.identify('js-proxy-user', { email: 'proxy@example.com' })
    window.posthog.capture('js_after_identify', { index: 99 })
  })
  // Wait for recording to start and for snapshots to be sent (the recorder buffers ~2 s); mutate the page
  // meanwhile so there is something incremental to record.
  const deadline = Date.now() + 20000
  const answered = (path) => requests.some((r) => r.method === 'POST' && r.status === 200 &&
    new URL(r.url).pathname.startsWith(path))
  while (Date.now() < deadline &&
         !([...sent.values()].some((e) => e.event === '$snapshot') && answered('/s') && answered('/e'))) {
    // Real input: the recorder treats a session without mouse or keyboard activity as idle.
    await tab.mouse.move(20 + Math.random() * 200, 20 + Math.random() * 100)
    await tab.click('#b')
    await tab.evaluate(() => { document.getElementById('text').textContent = 'changed ' + Date.now() })
    await tab.waitForTimeout(250)
  }
  await tab.waitForTimeout(1000)
  // Leaving the page sends $pageleave (and the last snapshots) with sendBeacon, which Playwright cannot
  // observe; the spool will tell.
  await tab.goto('about:blank')
  await tab.waitForTimeout(500)
  await Promise.all(pending)
} finally {
  await closeBrowser()
  closeServer()
}

process.stdout.write(JSON.stringify({ origin, sent: [...sent.values()], requests, consoleErrors }))
