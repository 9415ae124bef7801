"""Sink worker: drains captured events (Kafka topics or a local spool) into a ClickHouse events table.

Entry points live in `gateway.sinkworker.cli` (`add_sink_arguments`, `run_sink`).
"""
