// Shared by the posthog-js scripts: the page's own origin and a headless Debian Chromium.
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'

// Serves `files` ({path: [contentType, body]}, query strings ignored) on a free loopback port.
export async function servePage(files) {
  const server = createServer((request, response) => {
    const file = files[request.url.split('?')[0]]
    if (file) {
      response.writeHead(200, { 'Content-Type': file[0] }).end(file[1])
    } else {
      response.writeHead(404).end()
    }
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => server.close() }
}

// Chromium with the flags this machine needs (no background networking, fresh profile, no sandbox as root).
export async function launchChromium() {
  const userDataDir = mkdtempSync(join(tmpdir(), 'gateway-e2e-chromium-'))
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  })
  return {
    context,
    close: async () => {
      await context.close()
      rmSync(userDataDir, { recursive: true, force: true })
    },
  }
}
