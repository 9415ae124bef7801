"""Every Prometheus metric of the gateway's processes is defined in this package, and nowhere else.

One module per area. Each process has one registry and exports the metrics of every module it imports,
used or not (in multiprocess mode only those with values):
- `serve`: capture, edge policy, Kafka and upstream delivery, the spool, reverse proxy, local flags,
  privacy rules and SIGHUP reloads; exported by `gateway serve`.
- `logs`: log records suppressed by the rate limit; every process (gateway.logs uses it).
- `sink`: the sink worker (Kafka or spools into ClickHouse), `gateway sink --metrics-port`; also
  exported by the recordings sink, which reuses the sink's dead-letter queue.
- `clickhouse`: ClickHouse replica health; exported by the sink worker and by `gateway serve` (its
  GDPR endpoint deletes through the same writers).
- `recordings`: `gateway recordings sink --recordings-http-port`.
- `build`: `gateway_build_info{version, python}`, exported by every process above.

And how `gateway serve` exports them: `multiproc` (one scrape of any worker shows all workers) and
`export` (the /metrics exposition, per-worker gauge sampling, hot-path local counters). This file
imports nothing, so `multiproc` can run before anything imports prometheus_client.
"""
