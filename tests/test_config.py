"""Config: defaults, TOML, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mark.core.config import load_config
from mark.core.errors import InvalidValue


def test_embedded_defaults() -> None:
    c = load_config(environ={})
    assert (c.server.host, c.server.port, c.server.max_body_mb) == ("127.0.0.1", 8000, 64.0)
    assert c.database.url.startswith("sqlite+aiosqlite:///")
    assert (c.cloud.provider, c.serverless.provider) == ("local", "local")
    assert c.control.tick_s == 60.0


def test_toml_then_environment_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "mark.toml"
    path.write_text(
        "[server]\nport = 9000\nworkers = 2\n[planner]\nspot_max_share = 0.5\n"
        '[cloud]\nzones = ["us-east-1a"]\n'
    )
    env = {
        "MARK_SERVER__PORT": "9100",
        "MARK_ADMIN_TOKEN": "123",
        "MARK_DATABASE_URL": "postgresql+asyncpg://u@h/db",
        "MARK_CLOUD__ZONES": '["a", "b"]',
        "MARK_UNRELATED": "x",
        "MARK_NOSUCHSECTION__KEY": "1",
    }
    c = load_config(path, environ=env, server={"workers": 3})
    assert (c.server.port, c.server.workers) == (9100, 3)
    assert c.server.admin_token == "123"  # stays a string even though it parses as JSON
    assert c.database.url == "postgresql+asyncpg://u@h/db"
    assert c.cloud.zones == ("a", "b")
    assert c.planner.spot_max_share == 0.5


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nprot = 1\n", "server.prot"),
        ("[planner]\nspot_max_share = 2\n", "planner.spot_max_share"),
        ("[cloud]\nprovider = 'ec2'\n", "config"),
        ("server = 3\n", "server"),
        ("[server\n", "config"),
        ('[server]\nport = "eighty"\n', "server.port"),
        ("[cloud]\nzones = 3\n", "cloud.zones"),
        ("[server]\ndemo = [true]\n", "server.demo"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InvalidValue) as info:
        load_config(path, environ={})
    assert info.value.field == field


def test_missing_file_and_bad_env() -> None:
    with pytest.raises(InvalidValue, match="does not exist"):
        load_config("/nonexistent/mark.toml", environ={})
    with pytest.raises(InvalidValue) as info:
        load_config(environ={"MARK_SERVER__PORT": "abc"})
    assert info.value.field == "server.port"


def test_long_environment_names_beat_short_ones_and_read_os_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = load_config(environ={"MARK_PORT": "9001", "MARK_SERVER__PORT": "9002", "mark_host": "::1"})
    assert (c.server.port, c.server.host) == (9002, "::1")
    monkeypatch.setenv("MARK_SERVER__WORKERS", "4")
    assert load_config().server.workers == 4
    with pytest.raises(InvalidValue, match="cloud"):
        load_config(environ={"MARK_CLOUD__ZONES": "us-east-1a"})  # a tuple is written as JSON


def test_a_wrong_type_stops_the_cli_at_start_up_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mark.apps.cli import main

    path = tmp_path / "bad.toml"
    path.write_text('[control]\ntick_s = "every minute"\n')
    assert main(["config", "--config", str(path)]) == 2
    assert "control.tick_s" in capsys.readouterr().err


def test_readme_documents_every_key_with_its_default() -> None:
    from pathlib import Path

    from mark.apps.commands.config import render_markdown

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = render_markdown(load_config(environ={}))
    missing = [line for line in table.splitlines() if line.startswith("| `") and line not in readme]
    assert not missing, (
        "README's config table is stale; regenerate it with `mark config --format markdown`:\n"
        + "\n".join(missing)
    )
