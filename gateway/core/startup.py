"""Start-up failures reported to the user as one line: `gateway: error: <what> (<value>): <why>`.

Exit code 2 for configuration errors (the user must change a flag, env var or file), 1 for runtime
ones (a port in use, a locked spool, a disk that cannot be written). `gateway.cli` prints them; a
traceback is shown only with `--log-level debug`.
"""

from __future__ import annotations

import errno
import os
import socket

CONFIG_EXIT = 2
RUNTIME_EXIT = 1


class StartupError(Exception):
    """The gateway cannot start: names what failed, the offending value and why."""

    def __init__(self, what: str, value: object, why: str, *, exit_code: int = RUNTIME_EXIT) -> None:
        super().__init__(f"{what} ({value}): {why}")
        self.what = what
        self.value = value
        self.why = why
        self.exit_code = exit_code

    def line(self) -> str:
        return f"gateway: error: {self}"


def listen_error(exc: OSError, host: str, port: int, what: str = "listen address") -> StartupError:
    """A listener could not bind: an unresolvable host or an address not of this machine is a
    configuration error; a port in use or not permitted is a runtime one."""
    if isinstance(exc, socket.gaierror):
        return StartupError("--host", host, f"cannot be resolved: {exc.strerror or exc}", exit_code=CONFIG_EXIT)
    why = os.strerror(exc.errno) if exc.errno else str(exc)
    code = CONFIG_EXIT if exc.errno == errno.EADDRNOTAVAIL else RUNTIME_EXIT
    return StartupError(what, f"{host}:{port}", why.lower(), exit_code=code)
