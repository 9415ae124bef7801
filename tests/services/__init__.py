"""Real services for the test-suite (Kafka, Redis, ClickHouse, nginx), run as local processes.

`python -m tests.services start|stop|status` manages long-lived ones for many pytest runs;
`tests.services.fixtures` starts them lazily per session otherwise. `base` holds the shared
process machinery, one module per service holds the rest. This package imports nothing on its
own, so `python3 -m tests.services.kafka_jars` works without the project's dependencies.
"""
