"""One embedded chdb writer per test session (chdb allows one data directory per process)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest

from gateway.clickhouse.chdb_writer import ChdbWriter
from gateway.clickhouse.schema import events_table_ddl, table_name

_tables = itertools.count()


@pytest.fixture(scope="session")
def chdb_writer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbWriter]:
    writer = asyncio.run(ChdbWriter.open(str(tmp_path_factory.mktemp("chdb"))))
    yield writer
    asyncio.run(writer.close())


@pytest.fixture
def chdb_table(chdb_writer: ChdbWriter) -> str:
    """A fresh events table in the session's chdb; returns its quoted name."""
    name = f"events_{next(_tables)}"
    asyncio.run(chdb_writer.command(events_table_ddl(chdb_writer.caps, "default", name, retention_days=3650)))
    return table_name("default", name)
