"""Settings for tests the way `gateway serve` builds them: flags + env, values and components checked."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from gateway.http.components import check_components
from gateway.settings import ServeSettings, add_arguments, settings_from_args


def parse_serve_settings(argv: Sequence[str], environ: dict[str, str] | None = None) -> ServeSettings:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(parser, ServeSettings)
    return check_components(settings_from_args(parser.parse_args(list(argv)), ServeSettings, environ or {}))
