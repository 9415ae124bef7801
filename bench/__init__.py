"""Load-test harness and benchmark suites (python -m bench)."""
