"""Reading the settings: `retain.toml` strictly, the environment through pydantic-settings.

The file is checked here, before the model, so that each problem names its table and key the way
the user wrote them (with a did-you-mean): pydantic's `extra="forbid"` would only say "extra
inputs are not permitted". Values are checked by the model; its errors are translated back into
`[table] key` and the file or environment variable the value came from (env beats file, so a
value present in the environment is the environment's).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsError

from engine.config.model import ENV_PREFIX, DaemonSettings, SegmentSettings, Settings, SmtpSettings
from engine.errors import InputError, did_you_mean

CONFIG_FILE = "retain.toml"
NESTED = ("smtp", "caps", "quiet_hours", "daemon", "segment")  # tables that are one field each; [retain] is the top
SECRETS = {("smtp", "password"), ("retain", "secret_key"), ("retain", "webhook_secret"),
           ("retain", "api_token")}
OPEN_TABLES = ("caps", "quiet_hours")  # keys are channel names, any connector's


def _table_keys() -> dict[str, list[str]]:
    """Each table's keys, secrets included (refused with their own message)."""
    top = [name for name in Settings.model_fields if name not in NESTED]
    return {"retain": top, "smtp": list(SmtpSettings.model_fields), "caps": [],
            "quiet_hours": [], "daemon": list(DaemonSettings.model_fields),
            "segment": list(SegmentSettings.model_fields)}


def env_name(table: str, key: str) -> str:
    """`("smtp", "host")` -> `RETAIN_SMTP_HOST`; `("retain", "timezone")` -> `RETAIN_TIMEZONE`."""
    return f"{ENV_PREFIX}{'' if table == 'retain' else table + '_'}{key}".upper()


def read_config(path: Path) -> dict[str, Any]:
    """`retain.toml` as the model's input; InputError listing every unknown or secret key."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: {exc}") from None
    known = _table_keys()
    problems: list[str] = []
    values: dict[str, Any] = {}
    for table, body in document.items():
        if not isinstance(body, dict) and table in known["retain"]:
            problems.append(f"{path}: {table!r} is outside a table: put it under [retain]")
        elif table not in known:
            hint = did_you_mean(table, known) or f" (expected one of: {', '.join(known)})"
            where = "table" if isinstance(body, dict) else "key outside a table"
            problems.append(f"{path}: unknown {where} {table!r}{hint}")
        elif not isinstance(body, dict):
            problems.append(f"{path}: {table!r} must be a table: [{table}]")
        else:
            problems.extend(_check_table(path, table, body, known[table]))
            target = values if table == "retain" else values.setdefault(table, {})
            target.update(body)
    if problems:
        raise InputError("\n".join(problems))
    return values


def _check_table(path: Path, table: str, body: dict[str, Any], keys: list[str]) -> list[str]:
    """Unknown keys (with did-you-mean) and secrets written into the file."""
    problems = []
    for key in body:
        if (table, key) in SECRETS:
            problems.append(f"{path}: [{table}] {key} is a secret and is never read from a file: "
                            f"set the environment variable {env_name(table, key)} instead")
        elif table == "retain" and key in NESTED:
            problems.append(f"{path}: [retain] {key} is a table of its own: write [{key}]")
        elif table not in OPEN_TABLES and key not in keys:
            hint = did_you_mean(key, keys) or f" (expected one of: {', '.join(keys)})"
            problems.append(f"{path}: [{table}] unknown key {key!r}{hint}")
    return problems


class GivenEnv(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        from pydantic_settings.sources.utils import parse_env_vars

        return parse_env_vars(self._given, self.case_sensitive, self.env_ignore_empty,
                              self.env_parse_none_str)


def merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """`high` over `low`, table by table (env `RETAIN_SMTP_PORT` keeps the file's smtp host)."""
    merged = dict(low)
    for key, value in high.items():
        below = merged.get(key)
        both = isinstance(value, dict) and isinstance(below, dict)
        merged[key] = merge(below, value) if both else value  # type: ignore[arg-type]
    return merged


def describe_errors(exc: ValidationError, path: Path, from_env: dict[str, Any]) -> str:
    """One line per bad value: where it came from, `[table] key`, what is wrong."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        message = error["msg"].removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        if not loc:  # a check across keys (_transport)
            lines.append(f"settings: {message}")
            continue
        table, key = (loc[0], loc[1]) if loc[0] in NESTED and len(loc) > 1 else ("retain", loc[0])
        in_env = key in (from_env.get(table, {}) if table != "retain" else from_env)
        where = f"environment variable {env_name(table, key)}" if in_env else str(path)
        if error["type"] == "extra_forbidden":
            known = [env_name(table, k) for k in _table_keys()[table]]
            message = f"unknown setting{did_you_mean(env_name(table, key), known)}"
        elif error["type"] != "value_error" and (table, key) not in SECRETS:
            message += f" (got {error['input']!r})"
        what = "" if (table, key) in SECRETS else f" [{table}] {key}:"  # never from a file
        lines.append(f"{where}:{what} {message}")
    return "\n".join(lines)


def load_settings(project_dir: Path | None = None, env: Mapping[str, str] | None = None
                  ) -> Settings:
    """Merge defaults, `retain.toml` and `RETAIN_*` variables, in rising precedence.

    `env` replaces `os.environ` (tests pass `env={}`). InputError names every bad table.key and
    the file or variable it came from, never a secret's value.
    """
    env = os.environ if env is None else env
    path = (project_dir or Path.cwd()) / CONFIG_FILE
    from_file = read_config(path) if path.is_file() else {}
    try:
        from_env = GivenEnv(Settings, env)()
    except SettingsError as exc:  # RETAIN_SMTP='...' is read as JSON for the whole table
        field = re.search(r'field "(\w+)"', str(exc))
        name = env_name("retain", field.group(1)) if field else "a RETAIN_ variable"
        raise InputError(f"environment variable {name}: not a JSON object; set one variable per "
                         f"key instead, like {name}_{'HOST' if name.endswith('SMTP') else 'EMAIL'}"
                         ) from None
    try:
        return Settings(**merge(from_file, from_env))
    except ValidationError as exc:
        raise InputError(describe_errors(exc, path, from_env)) from None
