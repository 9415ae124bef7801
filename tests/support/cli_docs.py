"""The `gateway` command's parsers and the README tables that document their flags."""

from __future__ import annotations

import argparse
import re

from gateway.cli import build_parser
from tests.support.processes import REPO_ROOT

README = REPO_ROOT / "README.md"


def sub_parser(*path: str) -> argparse.ArgumentParser:
    """The parser of `gateway <path...>`, e.g. sub_parser("recordings", "sink")."""
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def long_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every --flag the parser takes, but --help."""
    return {option for action in parser._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"}


def readme_section(text: str, heading: str) -> str:
    """The section of README text from `heading` up to the next "## " heading."""
    section = text[text.index(heading):]
    return section[:section.index("\n## ", 1)]


def documented_flags(section: str) -> set[str]:
    """The --flags named in the first column of the section's table rows."""
    return {flag for line in section.splitlines() if line.startswith("| `-")
            for flag in re.findall(r"--[a-z][a-z0-9-]*", line.split("|")[1])}
