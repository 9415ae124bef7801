"""Project-wide pytest configuration: the real-service fixtures."""

from tests.services.fixtures import clickhouse_http_url, kafka, redis_url, session_services

__all__ = ["clickhouse_http_url", "kafka", "redis_url", "session_services"]
