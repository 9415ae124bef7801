// Loads posthog-js (the published browser bundle from node_modules) in headless Debian Chromium on a page served
// from a local static server (another origin than the gateway), captures a few events, leaves the page (so the
// $pageleave beacon goes out) and reports, as one JSON object on stdout, every event the SDK handed to its
// transport (from `before_send`), the requests the page made and console errors.
//
// usage: node run-posthog-js.mjs <gateway-url> <token>
import { readFileSync } from 'node:fs'

import { launchChromium, servePage } from './browser.mjs'

const [apiHost, token] = process.argv.slice(2)
if (!apiHost || !token) {
  console.error('usage: node run-posthog-js.mjs <gateway-url> <token>')
  process.exit(2)
}

const bundle = readFileSync(new URL('./node_modules/posthog-js/dist/array.full.js', import.meta.url))
const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>gateway e2e</title>
<script src="/posthog.js"></script>
<script>
  window.__sent = []
  posthog.init(${JSON.stringify(token)}, {
    api_host: ${JSON.stringify(apiHost)},
    opt_out_useragent_filter: true, // headless Chrome is otherwise dropped as a bot
    request_queue_config: { flush_interval_ms: 250 },
    disable_session_recording: true,
    autocapture: false,
    before_send: (event) => {
      const seen = { uuid: event.uuid, event: event.event, distinct_id: event.properties.distinct_id }
      window.__sent.push(seen)
      console.log('SENT ' + JSON.stringify(seen)) // survives navigation, unlike window.__sent
      return event
    },
  })
</script></head><body>ok</body></html>`

const { origin, close: closeServer } = await servePage({
  '/posthog.js': ['application/javascript', bundle],
  '/index.html': ['text/html; charset=utf-8', page],
})
const { context, close: closeBrowser } = await launchChromium()

const sent = new Map()
const requests = []
const consoleErrors = []
try {
  const tab = await context.newPage()
  tab.on('console', (message) => {
    if (message.text().startsWith('SENT ')) {
      const event = JSON.parse(message.text().slice(5))
      sent.set(event.uuid, event)
    } else if (message.type() === 'error') {
      consoleErrors.push(message.text())
    }
  })
  tab.on('requestfinished', async (request) => {
    if (!request.url().startsWith(apiHost)) return
    const response = await request.response()
    requests.push({
      method: request.method(),
      url: request.url(),
      contentType: request.headers()['content-type'] ?? null,
      status: response?.status() ?? null,
      allowOrigin: response ? await response.headerValue('access-control-allow-origin') : null,
    })
  })
  tab.on('requestfailed', (request) => {
    if (request.url().startsWith(apiHost)) {
      requests.push({ method: request.method(), url: request.url(), failure: request.failure()?.errorText })
    }
  })

  await tab.goto(`${origin}/index.html`)
  await tab.waitForFunction(() => window.posthog && window.posthog.__loaded)
  await tab.evaluate(() => {
    for (let i = 0; i < 5; i++) window.posthog.capture('js_event', { index: i, nested: { ok: true } })
    window.posthog.identify('js-user-1', { email: 'js@example.com' })
    window.posthog.group('company', 'js-company', { name: 'JS Inc' })
    window.posthog.alias('js-alias-1')
    window.posthog.capture('js_after_identify', { index: 99 })
  })
  // The queue flushes every 250 ms: wait for the first answered batch, then for any stragglers.
  await tab.waitForFunction(() => window.__sent.length >= 10)
  const deadline = Date.now() + 10000
  while (!requests.some((r) => r.method === 'POST' && r.status === 200) && Date.now() < deadline) {
    await tab.waitForTimeout(100)
  }
  await tab.waitForTimeout(1000)
  // Leaving the page sends $pageleave with sendBeacon, which Playwright cannot observe; the spool will tell.
  await tab.goto('about:blank')
  await tab.waitForTimeout(500)
} finally {
  await closeBrowser()
  closeServer()
}

process.stdout.write(JSON.stringify({ origin, sent: [...sent.values()], requests, consoleErrors }))
