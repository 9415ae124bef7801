// Loads an exported recording (one JSON array of rrweb events) into rrweb-player (its dist files from
// node_modules) in headless Debian Chromium, seeks to the end, screenshots the player and reports, as one
// JSON object on stdout, what the player says: its metadata (start, end, total time), how many events its
// replayer holds, what the replayed page's DOM contains, the colours of the replayed frame's pixels (the five
// most common, with counts) and console errors.
//
// usage: node play-rrweb.mjs <events.json> <screenshot.png>
import { readFileSync } from 'node:fs'

import { launchChromium, servePage } from './browser.mjs'

const [eventsPath, screenshotPath] = process.argv.slice(2)
if (!eventsPath || !screenshotPath) {
  console.error('usage: node play-rrweb.mjs <events.json> <screenshot.png>')
  process.exit(2)
}

const dist = new URL('./node_modules/rrweb-player/dist/', import.meta.url)
const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>player</title><link rel="stylesheet" href="/style.css">
<script src="/rrweb-player.js"></script></head>
<body style="margin:0"><div id="player"></div>
<script>
  fetch('/events.json').then((r) => r.json()).then((events) => {
    const Player = window.rrwebPlayer.default ?? window.rrwebPlayer
    window.player = new Player({
      target: document.getElementById('player'),
      props: { events, width: 1000, height: 600, autoPlay: false, showController: true },
    })
    window.playerReady = true
  }).catch((error) => { window.playerError = String(error) })
</script></body></html>`

const { origin, close: closeServer } = await servePage({
  '/index.html': ['text/html; charset=utf-8', page],
  '/rrweb-player.js': ['application/javascript', readFileSync(new URL('rrweb-player.umd.cjs', dist))],
  '/style.css': ['text/css', readFileSync(new URL('style.css', dist))],
  '/events.json': ['application/json', readFileSync(eventsPath)],
  '/favicon.ico': ['image/x-icon', ''],
})
const { context, close: closeBrowser } = await launchChromium()

const consoleErrors = []
let report
try {
  const tab = await context.newPage()
  await tab.setViewportSize({ width: 1100, height: 800 })
  tab.on('console', (message) => message.type() === 'error' && consoleErrors.push(message.text()))
  tab.on('pageerror', (error) => consoleErrors.push(String(error)))
  await tab.goto(`${origin}/index.html`)
  await tab.waitForFunction(() => window.playerReady || window.playerError, null, { timeout: 15000 })
  report = await tab.evaluate(() => {
    if (window.playerError) return { error: window.playerError }
    const meta = window.player.getMetaData()
    window.player.goto(meta.totalTime, false) // the final state: after the clicks and the typing
    return { meta, eventCount: window.player.getReplayer().service.state.context.events.length }
  })
  await tab.waitForTimeout(1000)
  const frame = tab.frames().find((f) => f !== tab.mainFrame())
  report.replayedText = frame ? await frame.evaluate(() => document.body?.innerText ?? '') : null
  report.replayedInputs = frame
    ? await frame.evaluate(() => [...document.querySelectorAll('input')].map((i) => ({ id: i.id, value: i.value })))
    : null
  await tab.screenshot({ path: screenshotPath })
  // The replayed page alone (the player's frame, without its controller): its colours, counted in a canvas.
  const frameShot = await tab.locator('.rr-player__frame').screenshot()
  report.frameColours = await tab.evaluate(async (png) => {
    const image = new Image()
    image.src = `data:image/png;base64,${png}`
    await image.decode()
    const canvas = Object.assign(document.createElement('canvas'), { width: image.width, height: image.height })
    const context = canvas.getContext('2d')
    context.drawImage(image, 0, 0)
    const pixels = context.getImageData(0, 0, image.width, image.height).data
    const counts = new Map()
    for (let i = 0; i < pixels.length; i += 4) {
      const colour = `${pixels[i]},${pixels[i + 1]},${pixels[i + 2]}`
      counts.set(colour, (counts.get(colour) ?? 0) + 1)
    }
    return { pixels: pixels.length / 4, top: [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5) }
  }, frameShot.toString('base64'))
} finally {
  await closeBrowser()
  closeServer()
}

process.stdout.write(JSON.stringify({ ...report, consoleErrors }))
