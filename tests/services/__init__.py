"""Real services for the test-suite (Kafka, Redis, ClickHouse, nginx), run as local processes.

`python -m tests.services start|stop|status` manages long-lived ones for many pytest runs;
`tests.services.fixtures` starts them lazily per session otherwise. See `base` for the machinery.
"""

from tests.services.clickhouse_server import ClickHouseServer
from tests.services.kafka_broker import KafkaBroker
from tests.services.redis_server import RedisServer

# Services the CLI and the fixtures manage by name (nginx needs a caller's config, so it is not here).
SERVICES = {cls.name: cls for cls in (KafkaBroker, RedisServer, ClickHouseServer)}
