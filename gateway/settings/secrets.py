"""Secrets that settings name by file (never in a flag, where `ps` would show them)."""

from __future__ import annotations

from pathlib import Path


def read_secret(path: Path) -> str:
    """The secret kept in the file at `path`, stripped; ValueError if it is empty (OSError if unreadable)."""
    secret = path.read_text().strip()
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret
