"""The only configuration code: the field machinery (flags, `GATEWAY_*` env vars, TOML file, help,
`config check`) and the settings of `gateway serve` and `gateway sink` on it. Imports nothing else of
the gateway but `gateway.core`; checks that need the components live with the composition
(`gateway.http.components.check_components`)."""

from gateway.settings.fields import (
    ConfigError,
    add_arguments,
    add_config_argument,
    env_name,
    load,
    settings_from_args,
)
from gateway.settings.serve import ServeSettings
from gateway.settings.sink import SinkSettings

__all__ = [
    "ConfigError",
    "ServeSettings",
    "SinkSettings",
    "add_arguments",
    "add_config_argument",
    "env_name",
    "load",
    "settings_from_args",
]
