"""Where recording blocks live: a directory (embedded default) or an S3-compatible bucket.

Both stores put whole objects atomically (a reader never sees half a block), overwrite an object of
the same key (a block re-written after a crash replaces its first copy), list keys under a prefix
with their age, and delete keys (deleting a missing key is not an error).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from gateway.core.startup import CONFIG_EXIT, StartupError
from gateway.spool.segment import fsync_directory


class StorageError(Exception):
    """The store could not be reached or refused a request; retried by the sink."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    modified: float  # epoch seconds
    size: int


class BlockStore(Protocol):
    location: str  # shown in logs and readiness: a path or s3://bucket/prefix

    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes: ...

    def list(self, prefix: str = "") -> AsyncIterator[StoredObject]: ...

    async def delete(self, keys: Iterable[str]) -> None: ...

    async def check(self) -> None:
        """Raise StorageError if the store cannot be used now."""
        ...

    async def close(self) -> None: ...


class DirectoryStore:
    """Blocks as files under a directory: written to a temporary name, fsynced, renamed."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"block key {key!r} leaves the store")
        return path

    async def put(self, key: str, data: bytes) -> None:
        await self._io(self._put, self._path(key), data)

    @staticmethod
    def _put(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)

    async def get(self, key: str) -> bytes:
        return await self._io(self._path(key).read_bytes)

    async def list(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        for found in await self._io(self._list, prefix):
            yield found

    def _list(self, prefix: str) -> list[StoredObject]:
        if not self.root.is_dir():
            return []
        found = []
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    stat = path.stat()
                    found.append(StoredObject(key, stat.st_mtime, stat.st_size))
        return sorted(found, key=lambda item: item.key)

    async def delete(self, keys: Iterable[str]) -> None:
        paths = [self._path(key) for key in keys]
        await self._io(lambda: [path.unlink(missing_ok=True) for path in paths])

    async def check(self) -> None:
        await self._io(self._check)

    def _check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"{self.root} is not writable")

    async def close(self) -> None:
        return None

    @staticmethod
    async def _io(function: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"{exc.strerror or exc}") from exc


@dataclass(frozen=True, slots=True)
class S3Config:
    bucket: str
    prefix: str = ""
    endpoint_url: str = ""  # empty: AWS
    region: str = "us-east-1"
    access_key_id: str = ""  # empty: botocore's own chain (env, profile, instance role)
    secret_access_key: str = ""


class S3Store:
    """Blocks as objects in an S3-compatible bucket (aiobotocore)."""

    def __init__(self, config: S3Config, client: Any, exit_stack: Any) -> None:
        self._config = config
        self._client = client
        self._exit_stack = exit_stack
        self._prefix = config.prefix.strip("/") + "/" if config.prefix.strip("/") else ""
        self.location = f"s3://{config.bucket}/{self._prefix}"

    @classmethod
    async def open(cls, config: S3Config) -> S3Store:
        from contextlib import AsyncExitStack

        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError:
            raise StartupError("S3 storage", f"s3://{config.bucket}", "aiobotocore is not installed: pip install "
                               "'posthog-gateway[s3]' (from a clone: pip install '.[s3]')",
                               exit_code=CONFIG_EXIT) from None

        stack = AsyncExitStack()
        credentials = {}
        if config.access_key_id:
            credentials = {"aws_access_key_id": config.access_key_id,
                           "aws_secret_access_key": config.secret_access_key}
        client = await stack.enter_async_context(get_session().create_client(
            "s3", region_name=config.region, endpoint_url=config.endpoint_url or None,
            config=AioConfig(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2},
                             s3={"addressing_style": "path"}),
            **credentials,
        ))
        return cls(config, client, stack)

    async def put(self, key: str, data: bytes) -> None:
        await self._call("put_object", Bucket=self._config.bucket, Key=self._prefix + key, Body=data)

    async def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = await self._client.get_object(Bucket=self._config.bucket, Key=self._prefix + key)
            async with response["Body"] as body:
                return bytes(await body.read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(key) from exc
            raise StorageError(str(exc)) from exc
        except Exception as exc:  # connection errors of aiohttp/botocore
            raise StorageError(repr(exc)) from exc

    async def list(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self._config.bucket, Prefix=self._prefix + prefix):
                for item in page.get("Contents", ()):
                    yield StoredObject(item["Key"][len(self._prefix):], item["LastModified"].timestamp(),
                                       item["Size"])
        except Exception as exc:
            raise StorageError(repr(exc)) from exc

    async def delete(self, keys: Iterable[str]) -> None:
        pending = [self._prefix + key for key in keys]
        for start in range(0, len(pending), 1000):  # DeleteObjects takes up to 1000 keys
            chunk = pending[start:start + 1000]
            result = await self._call("delete_objects", Bucket=self._config.bucket,
                                      Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True})
            errors = [error for error in result.get("Errors", ()) if error.get("Code") != "NoSuchKey"]
            if errors:
                raise StorageError(f"delete failed for {len(errors)} objects: {errors[0]}")

    async def check(self) -> None:
        await self._call("head_bucket", Bucket=self._config.bucket)

    async def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return await getattr(self._client, operation)(**kwargs)
        except Exception as exc:  # ClientError, EndpointConnectionError, timeouts
            raise StorageError(f"{operation}: {exc}") from exc

    async def close(self) -> None:
        await self._exit_stack.aclose()


async def open_store(url: str, s3: S3Config | None = None) -> BlockStore:
    """`s3://bucket/prefix` (with `s3`'s endpoint and credentials) or a directory path."""
    if url.startswith("s3://"):
        parts = urlsplit(url)
        base = s3 or S3Config(bucket="")
        config = S3Config(parts.netloc, parts.path.strip("/"), base.endpoint_url, base.region,
                          base.access_key_id, base.secret_access_key)
        return await S3Store.open(config)
    return DirectoryStore(Path(url.removeprefix("file://")))
