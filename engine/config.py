"""Settings: `RETAIN_*` environment variables, then `retain.toml` in the project folder, then defaults.

Secrets are never read from `retain.toml`: only from the environment. An unknown key in the file
is an error, not silently ignored, so a typo cannot quietly point Retain at the wrong database.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from engine.errors import InputError, did_you_mean

CONFIG_FILE = "retain.toml"
DEFAULT_URL = "sqlite:///retain.db"


@dataclass(frozen=True)
class Settings:
    """What a Retain project is configured with."""

    database_url: str = DEFAULT_URL
    playbooks_dir: str = "playbooks"


def _from_file(path: Path) -> dict[str, str]:
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("retain", {})
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: {exc}") from exc
    known = [f.name for f in fields(Settings)]
    for key, value in table.items():
        if key not in known:
            hint = did_you_mean(key, known) or f" (expected one of: {', '.join(known)})"
            raise InputError(f"{path}: [retain] unknown key {key!r}{hint}")
        if not isinstance(value, str):
            raise InputError(f"{path}: [retain] {key} must be a string, got {value!r}")
    return table


def load_settings(project_dir: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Merge defaults, `retain.toml` and `RETAIN_*` variables, in rising precedence."""
    env = dict(os.environ) if env is None else env
    path = (project_dir or Path.cwd()) / CONFIG_FILE
    values = _from_file(path) if path.is_file() else {}
    for item in fields(Settings):
        env_value = env.get(f"RETAIN_{item.name.upper()}")
        if env_value:
            values[item.name] = env_value
    return Settings(**values)
