"""The import direction of gateway/: every import (module level, in functions, under TYPE_CHECKING)
points down the layers below, and no two units import each other, even indirectly.

A unit is a top-level package or module of gateway/, or a sub-module placed on its own (the longest
name in PLACES wins). A unit may import units of its own layer or below, never above.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"

LAYERS: tuple[tuple[str, ...], ...] = (
    # Vocabulary and settings; the ops basics that every layer reports through (metrics: every
    # definition and its per-worker export; log format); supervision of forked children, for serve and the sink.
    ("settings", "core", "metrics", "logs", "child_processes"),
    # The pure protocol, privacy rules, the durable spool; and the aiohttp answer shapes and body
    # reading, which the edge, every handler and gdpr answer through (so below them, not with http/).
    ("capture", "privacy", "spool", "http.responses"),
    # Policy in front of the protocol, where records go, the PostHog HTTP client, ClickHouse writers;
    # the embedded mode's spool watch.
    ("edge", "sinks", "upstream", "clickhouse", "embedded"),
    # Features built on those: reverse proxy, local flags, GDPR, the sink worker, recordings.
    ("proxy", "flags", "gdpr", "sinkworker", "recordings"),
    # The composition root, handlers, lifecycle; SIGHUP reload applies settings to what it built.
    ("http", "reload"),
    # Entry points: process supervision and the commands.
    ("supervisor", "cli", "__main__", "check", "config_check"),
)

# Placed where they will live; none today.
ALIASES: dict[str, str] = {}


def layer_of(layers: tuple[tuple[str, ...], ...]) -> dict[str, int]:
    return {unit: index for index, units in enumerate(layers) for unit in units}


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join([package, *parts])] = path
    return names


def imported(tree: ast.AST, module: str, is_package: bool, modules: Mapping[str, Path]) -> Iterator[str]:
    """The modules of the package that `module` imports, wherever the import statement stands."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in modules else base


def unit_of(module: str, package: str, places: Mapping[str, int], aliases: Mapping[str, str]) -> str | None:
    """The longest placed (or aliased) name that `module` is, or is inside of."""
    parts = module.split(".")[1:]
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in aliases:
            return aliases[name]
        if name in places:
            return name
    return None


def import_problems(
    root: Path,
    package: str,
    layers: tuple[tuple[str, ...], ...],
    aliases: Mapping[str, str],
) -> list[str]:
    """Unplaced modules, imports against the layer order, and import cycles between units."""
    places = layer_of(layers)
    modules = module_names(root, package)
    problems: list[str] = []
    edges: dict[str, set[str]] = {}
    for module, path in modules.items():
        if module == package:
            continue
        source = unit_of(module, package, places, aliases)
        if source is None:
            problems.append(f"{module} is in no layer: place it in LAYERS")
            continue
        tree = ast.parse(path.read_text(), str(path))
        for target in sorted(set(imported(tree, module, path.name == "__init__.py", modules))):
            if target != package and not target.startswith(package + "."):
                continue
            unit = unit_of(target, package, places, aliases)
            if unit is None or unit == source:
                continue
            edges.setdefault(source, set()).add(unit)
            if places[unit] > places[source]:
                problems.append(
                    f"{module} imports {target}: {source} (layer {places[source]}) "
                    f"may not import {unit} (layer {places[unit]})"
                )
    problems += [f"import cycle: {cycle}" for cycle in cycles(edges)]
    return problems


def cycles(edges: Mapping[str, set[str]]) -> list[str]:
    """One line per group of units that import each other, even indirectly: a shortest cycle through
    the group's first unit, and the group's other units."""
    reach = {unit: _reachable(edges, unit) for unit in edges}
    found: list[str] = []
    seen: set[str] = set()
    for start in sorted(edges):
        if start in seen or start not in reach[start]:
            continue
        group = {unit for unit in reach[start] if start in reach.get(unit, ())}
        seen |= group
        path = _path_back(edges, start)
        line = " -> ".join(path)
        if rest := sorted(group - set(path)):
            line += f" (and with them: {', '.join(rest)})"
        found.append(line)
    return found


def _reachable(edges: Mapping[str, set[str]], start: str) -> set[str]:
    reached: set[str] = set()
    todo = list(edges.get(start, ()))
    while todo:
        unit = todo.pop()
        if unit not in reached:
            reached.add(unit)
            todo += edges.get(unit, ())
    return reached


def _path_back(edges: Mapping[str, set[str]], start: str) -> list[str]:
    """A shortest import path from `start` back to itself."""
    frontier = [[start]]
    visited = {start}
    while frontier:
        following = []
        for path in frontier:
            for unit in sorted(edges.get(path[-1], ())):
                if unit == start:
                    return [*path, start]
                if unit not in visited:
                    visited.add(unit)
                    following.append([*path, unit])
        frontier = following
    raise ValueError(f"{start} is on no cycle")


def test_gateway_imports_follow_the_layers() -> None:
    problems = import_problems(GATEWAY, "gateway", LAYERS, ALIASES)
    assert not problems, "\n".join(problems)


# --- the checker itself, on a tiny package written for each test ---

FAKE_LAYERS = (("core",), ("capture", "http.low"), ("http",))  # http.low: a sub-module placed lower


def fake_package(root: Path, files: Mapping[str, str]) -> Path:
    package = root / "fake"
    for name, source in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return package


@pytest.fixture
def clean_files() -> dict[str, str]:
    return {
        "core/__init__.py": "",
        "core/record.py": "RECORD = 1\n",
        "capture/__init__.py": "",
        "capture/parse.py": "from fake.core.record import RECORD\nfrom . import helpers\n",
        "capture/helpers.py": "from ..core import record\n",
        "http/__init__.py": "",
        "http/low.py": "import fake.core.record\n",
        "http/app.py": "import os\nfrom fake.capture import parse\nfrom fake.http import low\nfrom . import low as b\n",
    }


def test_checker_passes_imports_that_point_down(tmp_path: Path, clean_files: dict[str, str]) -> None:
    assert import_problems(fake_package(tmp_path, clean_files), "fake", FAKE_LAYERS, {}) == []


def test_checker_fails_on_an_import_against_the_direction(tmp_path: Path, clean_files: dict[str, str]) -> None:
    clean_files["core/record.py"] = "def late():\n    from fake.http.app import X\n"  # even inside a function
    problems = import_problems(fake_package(tmp_path, clean_files), "fake", FAKE_LAYERS, {})
    assert "fake.core.record imports fake.http.app: core (layer 0) may not import http (layer 2)" in problems
    assert "import cycle: capture -> core -> http -> capture (and with them: http.low)" in problems


def test_checker_fails_on_a_cycle_within_a_layer(tmp_path: Path, clean_files: dict[str, str]) -> None:
    clean_files["capture/helpers.py"] = "from fake.http import low\n"
    clean_files["http/low.py"] = "import typing\nif typing.TYPE_CHECKING:\n    from fake.capture import parse\n"
    problems = import_problems(fake_package(tmp_path, clean_files), "fake", FAKE_LAYERS, {})
    assert problems == ["import cycle: capture -> http.low -> capture"]


def test_checker_places_a_sub_module_by_its_alias(tmp_path: Path, clean_files: dict[str, str]) -> None:
    clean_files["http/writer.py"] = "import fake.core.record\n"
    clean_files["capture/parse.py"] = "from fake.http import writer\n"
    package = fake_package(tmp_path, clean_files)
    assert import_problems(package, "fake", FAKE_LAYERS, {"http.writer": "http.low"}) == []
    assert import_problems(package, "fake", FAKE_LAYERS, {}) == [
        "fake.capture.parse imports fake.http.writer: capture (layer 1) may not import http (layer 2)",
        "import cycle: capture -> http -> capture",
    ]


def test_checker_names_an_unplaced_module(tmp_path: Path, clean_files: dict[str, str]) -> None:
    clean_files["stray.py"] = ""
    problems = import_problems(fake_package(tmp_path, clean_files), "fake", FAKE_LAYERS, {})
    assert problems == ["fake.stray is in no layer: place it in LAYERS"]
