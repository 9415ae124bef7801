"""Resolve Apache Kafka's broker jars from Maven Central into `.cache/kafka-<version>/libs` (once).

Only the standard library is needed, so `python3 -m tests.services.kafka_jars` can run from
`scripts/install-system-deps` before the project's virtualenv exists.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

from tests.services.base import CACHE_DIR, ServiceError

KAFKA_VERSION = "4.4.0"
# slf4j binding for Kafka's slf4j-api 1.7; same version as the log4j-core that kafka-server pulls in.
LOG4J_VERSION = "2.25.5"
KAFKA_HOME = CACHE_DIR / f"kafka-{KAFKA_VERSION}"
LIBS_DIR = KAFKA_HOME / "libs"

POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.tests</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""


def ensure_jars() -> Path:
    """Resolve the broker's runtime jars from Maven Central into the cache (once); return the dir."""
    marker = LIBS_DIR / ".complete"
    if marker.exists():
        return LIBS_DIR
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("mvn not found; run scripts/install-system-deps")
    KAFKA_HOME.mkdir(parents=True, exist_ok=True)
    with (KAFKA_HOME / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be resolving right now
        if marker.exists():
            return LIBS_DIR
        pom = KAFKA_HOME / "pom.xml"
        pom.write_text(POM)
        result = subprocess.run(
            [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={LIBS_DIR}"],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"resolving Kafka {KAFKA_VERSION} jars failed:\n{result.stdout[-4000:]}")
        marker.touch()
    return LIBS_DIR


if __name__ == "__main__":
    print(ensure_jars())
