"""Session recordings: the replay topic (or the spools) → compressed per-session blocks in object storage
(S3-compatible or a directory) + `session_replay_events` rows in ClickHouse; export, retention, erasure."""
