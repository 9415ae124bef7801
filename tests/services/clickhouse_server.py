"""Debian's `clickhouse-server` (18.16) from a config written into the service's own directory."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from tests.services.base import HOST, Service, ServiceError, free_ports, kill_pid

CONFIG_XML = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <listen_host>{host}</listen_host>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <path>{root}/data/</path>
  <tmp_path>{root}/tmp/</tmp_path>
  <user_files_path>{root}/user_files/</user_files_path>
  <format_schema_path>{root}/format_schemas/</format_schema_path>
  <users_config>{root}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
{extra}</yandex>
"""

USERS_XML = """<?xml version="1.0"?>
<yandex>
  <profiles><default/></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default/></quotas>
</yandex>
"""


def clickhouse_query(http_url: str, sql: str, data: bytes | None = None, timeout: float = 60) -> str:
    """Run `sql` over ClickHouse's HTTP interface (with `data` as the body for INSERTs); return the text.

    Always a POST: ClickHouse treats GET requests as read-only, which rejects DDL.
    """
    url = f"{http_url}/?{urllib.parse.urlencode({'query': sql})}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data or b""), timeout=timeout) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:
        raise ServiceError(f"ClickHouse error {exc.code}: {exc.read().decode(errors='replace')}") from exc


@dataclass(kw_only=True)
class ClickHouseServer(Service):
    """A ClickHouse server on loopback with the `default` user and no password."""

    name = "clickhouse"
    http_port: int = 0
    tcp_port: int = 0
    extra_config: str = ""  # more <yandex> elements (a cluster replica's ZooKeeper, macros, remote_servers)

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP interface."""
        return f"http://{HOST}:{self.http_port}"

    def addresses(self) -> dict[str, str]:
        """HTTP URL and native-protocol address."""
        return {"http_url": self.http_url, "tcp": f"{HOST}:{self.tcp_port}"}

    def start(self) -> None:
        """Write the config, start the server and wait until `SELECT 1` answers over HTTP."""
        if not self.http_port:
            self.http_port, self.tcp_port = free_ports(2)
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.xml"
        config.write_text(CONFIG_XML.format(host=HOST, root=self.root, http_port=self.http_port,
                                            tcp_port=self.tcp_port, extra=self.extra_config))
        (self.root / "users.xml").write_text(USERS_XML)
        self._spawn(["clickhouse-server", f"--config-file={config}"])
        self._wait(self._answers, timeout=60)

    def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown (its data stays for a restart)."""
        if self.pid is not None:
            kill_pid(self.pid)
            self.pid = None
        self._record()

    def _answers(self) -> bool:
        """Whether `SELECT 1` succeeds."""
        with contextlib.suppress(OSError, ServiceError):
            return clickhouse_query(self.http_url, "SELECT 1", timeout=2).strip() == "1"
        return False
