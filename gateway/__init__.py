"""PostHog-compatible ingestion gateway."""
