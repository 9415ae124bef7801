"""The PostHog HTTP client, its circuit breaker and the upstream hosts: used by sinks, proxy and flags."""
