-- wrk script: cycle through pre-generated requests, print a machine-readable summary.
-- Usage: wrk -s replay_bodies.lua URL -- REQUESTS_FILE
-- REQUESTS_FILE holds records "METHOD PATH LENGTH\n" + "Header: value\n"... + "\n" + LENGTH body bytes.
-- Requests are formatted once in init(), so request() costs one table lookup (wrk stays fast).

local requests = {}
local counter = 0

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  local pos = 1
  while pos <= #data do
    local line_end = data:find("\n", pos, true)
    local method, path, length = data:sub(pos, line_end - 1):match("^(%S+) (%S+) (%d+)$")
    pos = line_end + 1
    local headers = {}
    while true do
      line_end = data:find("\n", pos, true)
      local line = data:sub(pos, line_end - 1)
      pos = line_end + 1
      if line == "" then break end
      local name, value = line:match("^([^:]+): (.*)$")
      headers[name] = value
    end
    length = tonumber(length)
    requests[#requests + 1] = wrk.format(method, path, headers, data:sub(pos, pos + length - 1))
    pos = pos + length
  end
  counter = math.random(#requests)
end

function request()
  counter = counter % #requests + 1
  return requests[counter]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes_read":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p99.9":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max))
end
