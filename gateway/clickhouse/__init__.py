"""ClickHouse: the writer protocol, HTTP (one server or replicas) and chdb writers, schema and quoting.

Shared by the sink worker, recordings and `gateway gdpr`; imports nothing of theirs.
"""
