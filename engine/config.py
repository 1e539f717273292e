"""Settings: `RETAIN_*` environment variables, then `retain.toml` in the project folder, then defaults.

Secrets are never read from `retain.toml`: only from the environment. An unknown key in the file
is an error, not silently ignored, so a typo cannot quietly point Retain at the wrong database.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, fields
from datetime import time, timedelta
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


@dataclass(frozen=True)
class Cap:
    """`[caps] email = "2/7d"`: at most `count` actions of a channel per customer per `window`,
    across all playbooks."""

    count: int
    window: timedelta

    @classmethod
    def parse(cls, text: str) -> Cap:
        """`"2/7d"` -> Cap(2, 7 days); ValueError naming the accepted form."""
        from engine.format.durations import parse_duration  # pydantic: not at every start-up

        count, _, window = str(text).partition("/")
        if not count.strip().isdigit() or int(count) < 1 or not window:
            raise ValueError(f"malformed cap {text!r}: expected COUNT/DURATION, like \"2/7d\"")
        return cls(int(count), parse_duration(window))

    def __str__(self) -> str:
        from engine.format.durations import format_duration

        return f"{self.count}/{format_duration(self.window)}"


_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True)
class QuietHours:
    """`[quiet_hours] email = "21:00-08:00"`: no sends from `start` until `end`, in the
    customer's local time (a window may cross midnight)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        """`"21:00-08:00"` -> QuietHours(21:00, 08:00); ValueError naming the accepted form."""
        parts = str(text).split("-")
        matches = [_CLOCK.fullmatch(part.strip()) for part in parts]
        if len(parts) != 2 or not all(matches) or parts[0].strip() == parts[1].strip():
            raise ValueError(f"malformed quiet hours {text!r}: expected HH:MM-HH:MM, like "
                             "\"21:00-08:00\"")
        start, end = (time(int(m.group(1)), int(m.group(2))) for m in matches if m)
        return cls(start, end)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"
