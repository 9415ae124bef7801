"""Start-up failures reported to the user as one line: `gateway: error: <what> (<value>): <why>`.

Exit code 2 for configuration errors (the user must change a flag, env var or file), 1 for runtime
ones (a port in use, a locked spool, a disk that cannot be written). `gateway.cli` prints them; a
traceback is shown only with `--log-level debug`.
"""

from __future__ import annotations

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
