"""GDPR tools: export and erase one person's events (ClickHouse and the local spool), retention, audit log."""
