"""The settings machinery shared by `gateway serve` and `gateway sink`: help shows real defaults, no
flag abbreviations, unknown GATEWAY_* variables reported, one env/TOML for both commands, log level
in any case, and README documents every flag."""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from gateway.settings import ConfigError, ServeSettings, SinkSettings, load
from gateway.settings.fields import NOT_SETTINGS, check_env, convert, unknown_env, warn_unknown_env
from tests.support.cli_docs import README, documented_flags, long_flags, readme_section, sub_parser


def command_settings(command: str, argv: list[str], environ: dict[str, str]):
    kind = ServeSettings if command == "serve" else SinkSettings
    return load(kind, build_parser().parse_args([command, *argv]), environ)


def help_of(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())  # argparse wraps lines anywhere


def test_help_shows_effective_defaults() -> None:
    serve, sink = help_of(sub_parser("serve")), help_of(sub_parser("sink"))
    assert "default: None" not in serve and "default: None" not in sink
    assert "(env GATEWAY_PORT; default: 8000)" in serve
    assert "(env GATEWAY_SPOOL_MAX_BYTES; default: 4G)" in serve
    assert "(env GATEWAY_MAX_HEADER_BYTES; default: 8190)" in serve
    assert "(env GATEWAY_RATE_LIMIT_IP; default: 200/2seconds, flags=100/2seconds)" in serve
    assert "(env GATEWAY_ADMIN_ALLOW_CIDRS; default: 127.0.0.0/8,::1/128)" in serve
    assert "(env GATEWAY_INSERT_CONCURRENCY; default: 2)" in sink
    assert "(env GATEWAY_TOPICS; default: events_plugin_ingestion," in sink


def test_config_check_shows_the_effective_rate_limit(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert "rate_limit_ip = []  # default: 200/2seconds, flags=100/2seconds, SIGHUP" in out


@pytest.mark.parametrize(
    "argv",
    [["serve", "--kafka-boot", "x"], ["sink", "--insert", "3"], ["config", "check", "--por", "1"],
     ["gdpr", "export", "--distinct", "a", "--out", "-"]],
)
def test_flag_prefixes_are_not_accepted(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("gateway: error: ")


def test_unknown_gateway_variables_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"GATEWAY_PROT": "8001", "GATEWAY_PORT": "8002", "GATEWAY_TABLE": "t", "OTHER": "x",
               **dict.fromkeys(NOT_SETTINGS, "1")}
    assert unknown_env(environ) == [
        "GATEWAY_PROT: unknown environment variable, ignored (did you mean 'GATEWAY_PORT'?)"]
    with caplog.at_level(logging.WARNING, logger="gateway.settings"):
        warn_unknown_env(environ)
    assert [r.getMessage() for r in caplog.records] == unknown_env(environ)
    with pytest.raises(ConfigError) as error:
        check_env(environ)
    assert error.value.line() == (
        "gateway: error: GATEWAY_PROT: unknown environment variable (did you mean 'GATEWAY_PORT'?)")
    assert error.value.exit_code == 2
    check_env({k: v for k, v in environ.items() if k != "GATEWAY_PROT"})  # the rest is fine


def test_serve_and_sink_read_one_env_and_one_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('log_level = "WARNING"\nport = 8001\ntable = "t"\ninsert_concurrency = 3\n'
                      'kafka_bootstrap_servers = "k1:9092"\n')
    environ = {"GATEWAY_CONFIG": str(config), "GATEWAY_SHUTDOWN_TIMEOUT": "5", "GATEWAY_LOG_FORMAT": "Text",
               "GATEWAY_MAX_IN_FLIGHT": "7"}
    serve = command_settings("serve", [], environ)
    sink = command_settings("sink", [], environ)
    assert (serve.port, serve.max_in_flight) == (8001, 7)
    assert (sink.table, sink.insert_concurrency) == ("t", 3)  # GATEWAY_MAX_IN_FLIGHT is serve's only
    for settings in (serve, sink):
        assert (settings.log_level, settings.log_format, settings.shutdown_timeout) == ("warning", "text", 5.0)
        assert settings.kafka_bootstrap_servers == "k1:9092"
    config.write_text("tabel = 't'\n")
    for command in ("serve", "sink"):
        with pytest.raises(ConfigError, match=re.escape("unknown key 'tabel' (did you mean 'table'?)")):
            command_settings(command, [], environ)


@pytest.mark.parametrize("command", ["serve", "sink"])
def test_log_level_in_any_case(command: str) -> None:
    for spelling, level in (("DEBUG", "debug"), ("Warning", "warning"), ("error", "error")):
        assert command_settings(command, ["--log-level", spelling], {}).log_level == level
        assert command_settings(command, [], {"GATEWAY_LOG_LEVEL": spelling}).log_level == level
    with pytest.raises(ConfigError) as error:
        command_settings(command, ["--log-level", "loud"], {})
    assert str(error.value) == "log_level (loud): expected one of debug, info, warning, error"


def test_shared_names_mean_the_same_to_both_commands() -> None:
    serve = ServeSettings.__dataclass_fields__
    sink = SinkSettings.__dataclass_fields__
    samples = {"kafka_bootstrap_servers": "k:9092", "spool_encryption_key_file": "/keys", "shutdown_timeout": "5",
               "log_level": "INFO", "log_format": "JSON", "data_dir": "/var/lib/gateway"}
    assert set(serve) & set(sink) == set(samples)
    for name, text in samples.items():  # one definition each (gateway/settings/shared.py)
        assert serve[name].type == sink[name].type, name
        assert convert(serve[name], text) == convert(sink[name], text), name
    assert serve["data_dir"].default == sink["data_dir"].default  # the sink drains what serve writes


def test_readme_documents_every_flag() -> None:
    text = README.read_text()
    sink_section = readme_section(text, "## Sink worker (`gateway sink`)")
    for command, section in (("serve", text.replace(sink_section, "")), ("sink", sink_section)):
        documented = documented_flags(section)
        flags = long_flags(sub_parser(command))
        assert flags - documented == set(), f"gateway {command} flags missing from README.md's tables"


def test_strict_teams_without_a_team_map_is_refused() -> None:
    """Every token would be unknown: the sink would send every event to the DLQ."""
    with pytest.raises(ConfigError, match="strict_teams"):
        command_settings("sink", ["--strict-teams"], {}).validate()
    settings = command_settings("sink", ["--strict-teams", "--team-map", "phc_a=1"], {}).validate()
    assert settings.strict_teams and settings.team_map == "phc_a=1"


@pytest.mark.parametrize(("argv", "says"), [
    (["--insert-quorum", "2"], "needs --cluster NAME"),
    (["--insert-quorum", "1", "--cluster", "c", "--clickhouse-url", "http://a,http://b"], "at least 2"),
    (["--insert-quorum", "3", "--cluster", "c", "--clickhouse-url", "http://a,http://b"], "more than the 2 replicas"),
    (["--insert-quorum", "2", "--cluster", "c", "--clickhouse", "http://a"], "more than the 0 replicas"),
])
def test_insert_quorum_needs_a_cluster_of_enough_replicas(argv: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match="insert_quorum") as raised:
        command_settings("sink", argv, {}).validate()
    assert says in str(raised.value)


def test_insert_quorum_from_flag_or_env() -> None:
    replicas = ["--cluster", "c", "--clickhouse-url", "http://a,http://b"]
    assert command_settings("sink", replicas, {}).validate().insert_quorum == 0
    assert command_settings("sink", [*replicas, "--insert-quorum", "2"], {}).validate().insert_quorum == 2
    assert command_settings("sink", replicas, {"GATEWAY_INSERT_QUORUM": "2"}).validate().insert_quorum == 2
