"""Load harness and benchmark suites for the PostHog-compatible gateway (`python -m bench`)."""
