"""Settings precedence: environment over retain.toml over defaults; unknown keys are errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Cli

from engine.config import load_settings
from engine.errors import InputError


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={})
    assert (settings.database_url, settings.playbooks_dir) == ("sqlite:///retain.db", "playbooks")


def test_file_then_environment(tmp_path: Path) -> None:
    (tmp_path / "retain.toml").write_text('[retain]\ndatabase_url = "sqlite:///file.db"\n'
                                          'playbooks_dir = "plays"\n')
    assert load_settings(tmp_path, env={}).database_url == "sqlite:///file.db"
    settings = load_settings(tmp_path, env={"RETAIN_DATABASE_URL": "sqlite:///env.db"})
    assert (settings.database_url, settings.playbooks_dir) == ("sqlite:///env.db", "plays")


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "retain.toml").write_text('[retain]\ndatabse_url = "x"\n')
    with pytest.raises(InputError, match="unknown key 'databse_url' \\(did you mean 'database_url'"):
        load_settings(tmp_path, env={})


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "retain.toml").write_text("[retain\n")
    with pytest.raises(InputError, match="retain.toml"):
        load_settings(tmp_path, env={})


def test_cli_db_option_overrides_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             cli: Cli) -> None:
    monkeypatch.setenv("RETAIN_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    code, _, _ = cli(["--db", f"sqlite:///{tmp_path / 'flag.db'}", "demo", "--json"])
    assert code == 0
    assert (tmp_path / "flag.db").exists() and not (tmp_path / "env.db").exists()
