"""Every Prometheus metric of the gateway's processes is defined in this package, and nowhere else.

One module per area. Each process has one registry and exports every metric whose module it imports
(unused ones at zero):
- `serve`: capture, edge policy, Kafka and upstream delivery, the spool, reverse proxy, local flags,
  privacy rules, log suppression and SIGHUP reloads; exported by `gateway serve`. gateway.logs uses it,
  so the sink worker and the recordings sink export these families too.
- `sink`: the sink worker (Kafka or spools into ClickHouse), `gateway sink --metrics-port`; also
  exported by the recordings sink, which reuses the sink's dead-letter queue.
- `clickhouse`: ClickHouse replica health; exported by the sink worker and by `gateway serve` (its
  GDPR endpoint deletes through the same writers).
- `recordings`: `gateway recordings sink --recordings-http-port`.

This file imports nothing: no prometheus_client before multiprocess mode is on (gateway.metrics_multiproc).
"""
