"""Shared machinery for the test services: ports, processes, readiness and the state file.

Every service runs as a child process in its own session (so its whole process group can be
signalled), logs to a file under its own directory and is stopped by PID. The state file lets
one command start services for many pytest runs and another stop them later.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = REPO_ROOT / ".services"
STATE_FILE = STATE_DIR / "state.json"
CACHE_DIR = REPO_ROOT / ".cache"
HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service could not be installed, started or reached."""


def free_port(host: str = HOST) -> int:
    """Return a TCP port that is free on `host` now, below the kernel's ephemeral range.

    Staying out of the ephemeral range means no outgoing connection can take the port while a
    service is down, so a broker restarted after an outage gets its port back.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(10_000, max(low, 20_000))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise ServiceError(f"no free port found on {host}")


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct free ports (for a service that listens on several)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def port_open(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on `host:port`."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def spawn(argv: Sequence[str], log_path: Path, *, cwd: Path | None = None) -> int:
    """Start `argv` detached in a new session, stdout+stderr appended to `log_path`; return its PID.

    The new session makes the PID also the process-group id, so `stop_pid` can reach any
    children, and keeps the service alive after a CLI that started it exits.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=cwd, start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise ServiceError(f"{argv[0]} not found; run scripts/install-system-deps") from exc
    return proc.pid


def pid_alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie child of ours is reaped and counts as dead)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group led by `pid`, or to `pid` alone if it leads none."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """Stop `pid` and its process group: SIGTERM, then SIGKILL after `timeout` seconds."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            _signal_group(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
        time.sleep(0.05)
    # Children that outlived the leader (e.g. nginx workers) still belong to the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def kill_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL `pid` and its process group (a crash) and wait until it is gone."""
    _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_until(ready: Callable[[], bool], *, what: str, pid: int, log_path: Path,
               timeout: float = 60.0) -> None:
    """Poll `ready()` until true; fail early if `pid` dies, and show the log tail on failure."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not pid_alive(pid):
            problem = "exited during startup"
        elif time.monotonic() > deadline:
            problem = f"not ready after {timeout:.0f}s"
        else:
            time.sleep(0.05)
            continue
        raise ServiceError(f"{what} {problem}; log {log_path}:\n{log_tail(log_path)}")


def load_state(path: Path = STATE_FILE) -> dict[str, dict[str, Any]]:
    """Records of the services in the state file, by service name (empty if there is none)."""
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return {}


def save_state(state: Mapping[str, Mapping[str, Any]], path: Path = STATE_FILE) -> None:
    """Replace the state file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


@dataclass(kw_only=True)
class Service(ABC):
    """One service process: subclasses fill in `start()` and the addresses they expose.

    The dataclass fields are the record kept in the state file (paths as strings), so a process
    started by the CLI can be found and stopped by another process. If `state_file` is set,
    `start()` and `stop()` keep that record up to date (a test that restarts the Kafka broker
    must not leave a stale PID behind).
    """

    name: ClassVar[str]
    root: Path
    pid: int | None = None
    state_file: Path | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        """Where the process's stdout and stderr go."""
        return self.root / f"{self.name}.log"

    @property
    def running(self) -> bool:
        """Whether the recorded process is alive."""
        return self.pid is not None and pid_alive(self.pid)

    @abstractmethod
    def start(self) -> None:
        """Start the process and wait until it serves requests."""

    def stop(self) -> None:
        """Stop the process if it runs (keeps its data, so `start()` can resume)."""
        if self.pid is not None:
            stop_pid(self.pid)
            self.pid = None
        self._record()

    def addresses(self) -> dict[str, str]:
        """Human-facing addresses for `status` output (URLs, host:port)."""
        return {}

    def to_record(self) -> dict[str, Any]:
        """The JSON-serialisable record for the state file."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "state_file"}
        record = {k: str(v) if isinstance(v, Path) else v for k, v in record.items()}
        return {**record, "addresses": self.addresses()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], state_file: Path | None = None) -> Self:
        """Rebuild a service from its state-file record."""
        names = {f.name for f in fields(cls)} - {"state_file"}
        values = {k: v for k, v in record.items() if k in names}
        values["root"] = Path(values["root"])
        return cls(**values, state_file=state_file)

    def _spawn(self, argv: Sequence[str]) -> None:
        """Spawn the service process in `root`, logging to `log_path`."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.pid = spawn(argv, self.log_path, cwd=self.root)

    def _wait(self, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        """Wait for readiness of the spawned process, stopping it if it never gets ready."""
        assert self.pid is not None
        try:
            wait_until(ready, what=self.name, pid=self.pid, log_path=self.log_path, timeout=timeout)
        except ServiceError:
            stop_pid(self.pid)
            self.pid = None
            raise
        self._record()

    def _record(self) -> None:
        """Write this service's record into `state_file`, if it has one."""
        if self.state_file is None:
            return
        state = load_state(self.state_file)
        state[self.name] = self.to_record()
        save_state(state, self.state_file)
