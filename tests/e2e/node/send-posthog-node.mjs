// Drives the real posthog-node SDK against a gateway and reports, as one JSON object on stdout, what it
// called and what it put on the wire (every request, decoded, with its answer), so the Python test can
// compare both with the spool.
//
// usage: node send-posthog-node.mjs <host> <token> <tag> <gzip|plain>
import { gunzipSync } from 'node:zlib'
import { PostHog } from 'posthog-node'

const [host, token, tag, mode] = process.argv.slice(2)
if (!host || !token || !tag || !['gzip', 'plain'].includes(mode)) {
  console.error('usage: node send-posthog-node.mjs <host> <token> <tag> <gzip|plain>')
  process.exit(2)
}

const requests = []
const errors = []

// The SDK's own fetch hook: observe requests without changing them.
async function observedFetch(url, options) {
  const response = await fetch(url, options)
  const text = await response.clone().text()
  const raw = Buffer.from(options.body instanceof Uint8Array ? options.body : String(options.body))
  const encoding = options.headers['Content-Encoding'] ?? null
  requests.push({
    url,
    method: options.method,
    encoding,
    magic: raw.subarray(0, 2).toString('hex'),
    payload: JSON.parse((encoding === 'gzip' ? gunzipSync(raw) : raw).toString('utf8')),
    status: response.status,
    response: text,
  })
  return response
}

const client = new PostHog(token, {
  host,
  flushAt: 25,
  maxBatchSize: 50,
  flushInterval: 100,
  fetchRetryCount: 0, // a failed request must surface as an error, not be hidden by a retry
  disableCompression: mode === 'plain',
  fetch: observedFetch,
})
client.on('error', (error) => errors.push(String(error?.stack ?? error)))

const calls = []
const past = new Date('2024-02-29T12:30:15.000Z')
for (let i = 0; i < 300; i++) {
  const distinctId = i % 5 ? `${tag}-user-${i % 37}` : `${tag}-ünïcødé-${i % 7}`
  const message = {
    distinctId,
    event: `${tag}_event_${i % 3}`,
    properties: { index: i, plan: ['free', 'pro'][i % 2], nested: { list: [1, 'two', null] } },
  }
  if (i % 4 === 0) message.uuid = crypto.randomUUID()
  if (i % 6 === 0) message.groups = { company: `${tag}-company-${i % 3}` }
  if (i % 50 === 0) message.timestamp = past
  client.capture(message)
  calls.push({ kind: 'capture', ...message })
}
for (let i = 0; i < 40; i++) {
  const properties = { $set: { email: `u${i}@example.com`, age: i }, $set_once: { first_seen: i } }
  client.identify({ distinctId: `${tag}-user-${i}`, properties })
  calls.push({ kind: 'identify', distinctId: `${tag}-user-${i}`, properties })
}
for (let i = 0; i < 20; i++) {
  client.alias({ distinctId: `${tag}-user-${i}`, alias: `${tag}-alias-${i}` })
  calls.push({ kind: 'alias', distinctId: `${tag}-user-${i}`, alias: `${tag}-alias-${i}` })
}
for (let i = 0; i < 20; i++) {
  const properties = { name: `Company ${i}`, employees: i * 10 }
  client.groupIdentify({ groupType: 'company', groupKey: `${tag}-company-${i}`, properties, distinctId: `${tag}-user-${i}` })
  calls.push({ kind: 'groupIdentify', groupKey: `${tag}-company-${i}`, properties, distinctId: `${tag}-user-${i}` })
}

await client.shutdown(20000)
process.stdout.write(JSON.stringify({ calls, requests, errors }))
