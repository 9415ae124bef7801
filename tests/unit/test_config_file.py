"""Config file layering (flags > env > file > defaults) and `gateway config check`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from gateway.http.components import check_components
from gateway.settings import ConfigError, ServeSettings, load


def settings(argv: list[str], environ: dict[str, str]):
    return check_components(load(ServeSettings, build_parser().parse_args(["serve", *argv]), environ))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        'port = 8001\nspool-max-bytes = "2G"\ncors_origins = ["https://app.example.com", "*.example.org"]\n'
        'fsync_window_ms = 5\nkafka_sasl_password = "file-secret"\n'
    )
    return path


def test_flags_beat_env_beat_file_beat_defaults(config: Path) -> None:
    file_only = settings(["--config", str(config)], {})
    assert file_only.port == 8001 and file_only.spool_max_bytes == 2 << 30 and file_only.fsync_window_ms == 5.0
    assert file_only.cors_origins == ("https://app.example.com", "*.example.org")
    assert file_only.host == "0.0.0.0"  # default
    env = {"GATEWAY_PORT": "8002", "GATEWAY_CONFIG": str(config)}  # the file can come from the env too
    assert settings([], env).port == 8002
    assert settings(["--port", "8003"], env).port == 8003
    assert settings([], {}).port == 8000


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("prot = 8001\n", "unknown key 'prot' (did you mean 'port'?)"),
        ("port = 70000\n", "port"),
        ('port = "eighty"\n', "port"),
        ("workers = [1, 2]\n", "workers"),
        ("allow_tokens = [1]\n", "allow_tokens"),
        ('rate_limit_ip = ["events=lots"]\n', "rate_limit_ip"),
        ("port = \n", "invalid TOML"),
    ],
)
def test_bad_config_file_names_the_key(tmp_path: Path, content: str, named: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(named)):
        settings(["--config", str(path)], {})


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        settings(["--config", str(tmp_path / "nope.toml")], {})


def test_config_check_prints_sources_and_redacts_secrets(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("admin-token-contents\n")
    monkeypatch.setenv("GATEWAY_PORT", "8002")
    assert main(["config", "check", "--config", str(config), "--workers", "2",
                 "--admin-token-file", str(token_file)]) == 0
    out = capsys.readouterr().out
    assert "file-secret" not in out and "admin-token-contents" not in out
    assert 'kafka_sasl_password = "<redacted>"  # file' in out
    assert f'admin_token_file = "{token_file}"  # flag, SIGHUP' in out
    assert "port = 8002  # env" in out and "workers = 2  # flag" in out
    assert "spool_max_bytes = 2147483648  # file" in out and "host = \"0.0.0.0\"  # default" in out
    assert "# tls_cert is unset" in out
    assert tomllib.loads(out)["port"] == 8002  # the output is itself a valid config file


def test_config_check_redacts_the_flags_api_key(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_FLAGS_PERSONAL_API_KEY", "phx_personal_key_contents")
    monkeypatch.setenv("GATEWAY_FLAGS_LOCAL_TOKEN", "phc_a,phc_b")
    assert main(["config", "check", "--upstream", "https://eu.i.posthog.com"]) == 0
    out = capsys.readouterr().out
    assert "phx_personal_key_contents" not in out
    assert 'flags_personal_api_key = "<redacted>"  # env' in out
    assert 'flags_local_token = ["phc_a", "phc_b"]  # env' in out


def test_config_check_and_errors_redact_url_passwords(capsys: pytest.CaptureFixture[str]) -> None:
    """A shared rate-limit store behind Redis AUTH: its URL's password is a secret like the others."""
    assert main(["config", "check", "--rate-limit-storage", "rediss://gw:redis-secret@cache:6380/0",
                 "--upstream", "https://gw:redis-secret@posthog.internal"]) == 0
    out = capsys.readouterr().out
    assert "redis-secret" not in out and 'rate_limit_storage = "rediss://gw:<redacted>@cache:6380/0"' in out
    assert 'upstream = "https://gw:<redacted>@posthog.internal"' in out
    assert main(["config", "check", "--rate-limit-storage", "memcached://gw:redis-secret@cache"]) == 2
    err = capsys.readouterr().err
    assert "rate_limit_storage" in err and "redis-secret" not in err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--flags-local-token", "phc_a", "--flags-personal-api-key", "k"], "needs an upstream"),
        (["--upstream", "https://eu.i.posthog.com", "--flags-local-token", "phc_a"], "flags_personal_api_key"),
        (["--upstream", "https://eu.i.posthog.com", "--flags-local-token", "phc_a",
          "--flags-personal-api-key-file", "/nonexistent/key"], "flags_personal_api_key_file"),
    ],
)
def test_local_flags_settings_are_checked(argv: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        settings(argv, {})


def test_config_check_rejects_an_invalid_config_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('fsync = "sometimes"\n')
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "fsync" in err and "sometimes" in err
