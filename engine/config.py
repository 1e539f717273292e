"""Settings: `RETAIN_*` environment variables, then `retain.toml` in the project folder, then defaults.

Secrets are never read from `retain.toml`: only from the environment.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from engine.errors import InputError
from engine.store import DEFAULT_URL

CONFIG_FILE = "retain.toml"


@dataclass(frozen=True)
class Settings:
    """What a Retain project is configured with."""

    database_url: str = DEFAULT_URL
    playbooks_dir: str = "playbooks"
    extra: dict[str, object] = field(default_factory=dict)


def load_settings(project_dir: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Merge defaults, `retain.toml` and `RETAIN_*` variables, in rising precedence."""
    env = dict(os.environ) if env is None else env
    values: dict[str, object] = {}
    path = (project_dir or Path.cwd()) / CONFIG_FILE
    if path.is_file():
        try:
            values.update(tomllib.loads(path.read_text(encoding="utf-8")).get("retain", {}))
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{path}: {exc}") from exc
    known = {f.name for f in fields(Settings)} - {"extra"}
    for name in known:
        env_value = env.get(f"RETAIN_{name.upper()}")
        if env_value:
            values[name] = env_value
    extra = {k: v for k, v in values.items() if k not in known}
    return Settings(**{k: v for k, v in values.items() if k in known}, extra=extra)  # type: ignore[arg-type]
