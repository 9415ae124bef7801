// posthog-js (the published bundle from node_modules) with session recording on, in headless Debian Chromium:
// a small page with a heading, a button, a text input and a password input (both masked, as posthog-js masks
// every input by default). It clicks, types `<secret>` into both inputs, waits until snapshots were answered
// 200 on `/s/`, and leaves the page. PostHog's remote config, which the gateway does not serve, is answered in
// the browser (Playwright routing) with replay on; `/s/` and `/e/` go to the gateway. It reports, as one JSON
// object on stdout, the session id, the `/s/` and `/e/` requests and console errors.
//
// usage: node record-posthog-js-session.mjs <gateway-url> <token> <secret>
import { readFileSync } from 'node:fs'

import { launchChromium, servePage } from './browser.mjs'

const [apiHost, token, secret] = process.argv.slice(2)
if (!apiHost || !token || !secret) {
  console.error('usage: node record-posthog-js-session.mjs <gateway-url> <token> <secret>')
  process.exit(2)
}

const dist = new URL('./node_modules/posthog-js/dist/', import.meta.url)
// What PostHog's /array/<token>/config answers for a project with replay on (see test_posthog_js_proxy.py).
const remoteConfig = {
  token,
  supportedCompression: ['gzip', 'gzip-js'],
  hasFeatureFlags: false,
  autocapture_opt_out: true,
  analytics: { endpoint: '/e/' },
  sessionRecording: { endpoint: '/s/', consoleLogRecordingEnabled: true, recorderVersion: 'v2' },
  heatmaps: false,
  surveys: false,
  siteApps: [],
}
const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>recorded page</title>
<style>
  body { font-family: sans-serif; background: #f4f0e8; margin: 40px; }
  h1 { color: #1d4ed8; } button { background: #f97316; color: white; font-size: 20px; padding: 10px 24px; }
  input { display: block; margin: 12px 0; font-size: 18px; }
</style>
<script src="/posthog.js"></script>
<script>
  posthog.init(${JSON.stringify(token)}, {
    api_host: ${JSON.stringify(apiHost)},
    opt_out_useragent_filter: true, // headless Chrome is otherwise dropped as a bot
    request_queue_config: { flush_interval_ms: 250 },
    autocapture: false,
  })
</script></head>
<body><h1>Checkout</h1><p id="status">Fill in the form</p>
<input id="name" type="text" placeholder="name"><input id="password" type="password" placeholder="password">
<button id="pay">Pay now</button></body></html>`

const { origin, close: closeServer } = await servePage({
  '/posthog.js': ['application/javascript', readFileSync(new URL('array.full.js', dist))],
  '/index.html': ['text/html; charset=utf-8', page],
})
const { context, close: closeBrowser } = await launchChromium()

const requests = []
const consoleErrors = []
let sessionId = null
try {
  await context.route(`${apiHost}/array/**`, (route) => {
    const path = new URL(route.request().url()).pathname
    if (path.endsWith('/config.js')) {
      const body = `(function(){window._POSTHOG_REMOTE_CONFIG=window._POSTHOG_REMOTE_CONFIG||{};` +
        `window._POSTHOG_REMOTE_CONFIG[${JSON.stringify(token)}]={config:${JSON.stringify(remoteConfig)},siteApps:[]}})();`
      return route.fulfill({ status: 200, contentType: 'application/javascript', body })
    }
    return route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(remoteConfig) })
  })
  await context.route(`${apiHost}/static/**`, (route) => {
    const name = new URL(route.request().url()).pathname.split('/').pop()
    return route.fulfill({ status: 200, contentType: 'application/javascript', body: readFileSync(new URL(name, dist)) })
  })
  const tab = await context.newPage()
  await tab.setViewportSize({ width: 1000, height: 600 })
  tab.on('console', (message) => message.type() === 'error' && consoleErrors.push(message.text()))
  tab.on('pageerror', (error) => consoleErrors.push(String(error)))
  tab.on('requestfinished', async (request) => {
    const path = new URL(request.url()).pathname
    if (!request.url().startsWith(apiHost) || !/^\/(s|e|i\/v0\/e)\/?$/.test(path)) return
    requests.push({ method: request.method(), path, status: (await request.response())?.status() ?? null })
  })

  await tab.goto(`${origin}/index.html`)
  await tab.waitForFunction(() => window.posthog?.__loaded && window.posthog.sessionRecordingStarted?.())
  sessionId = await tab.evaluate(() => window.posthog.get_session_id())
  await tab.mouse.move(100, 100)
  await tab.click('#name')
  await tab.keyboard.type(secret, { delay: 20 })
  await tab.click('#password')
  await tab.keyboard.type(secret, { delay: 20 })
  await tab.click('#pay')
  await tab.evaluate(() => { document.getElementById('status').textContent = 'Payment sent' })
  // The recorder flushes about every 2 s; keep the session active (an idle one is not flushed) until a
  // snapshot batch sent after the typing has been answered.
  const typed = requests.length
  const deadline = Date.now() + 20000
  while (Date.now() < deadline && !requests.slice(typed).some((r) => r.path === '/s' || r.path === '/s/')) {
    await tab.mouse.move(100 + Math.random() * 300, 100 + Math.random() * 200)
    await tab.waitForTimeout(250)
  }
  await tab.goto('about:blank')
  await tab.waitForTimeout(500)
} finally {
  await closeBrowser()
  closeServer()
}

process.stdout.write(JSON.stringify({ sessionId, requests, consoleErrors }))
