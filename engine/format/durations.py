"""Durations (`15m 12h 30d 2w`, signed for offsets: `-7d`) and percentages (`10%`).

One parser for the playbook models, the JSON Schema patterns and, later, SQL intervals, so the
three can never disagree about what `30d` means.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
DURATION_PATTERN = r"^[0-9]+[mhdw]$"
SIGNED_DURATION_PATTERN = r"^[+-]?[0-9]+[mhdw]$"
PERCENT_PATTERN = r"^[0-9]+(\.[0-9]+)?%$"
_DURATION = re.compile(r"([+-]?)([0-9]+)([mhdw])")
_PERCENT = re.compile(PERCENT_PATTERN)


def parse_duration(text: str, *, signed: bool = False) -> timedelta:
    """`30d` -> 30 days; raises ValueError with the accepted forms in the message."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or (match.group(1) and not signed):
        forms = "like 15m, 12h, 30d or 2w" + (", optionally signed (-7d)" if signed else "")
        raise ValueError(f"malformed duration {text!r}: expected a whole number and a unit, {forms}")
    sign, amount, unit = match.groups()
    delta = timedelta(**{UNITS[unit]: int(amount)})
    return -delta if sign == "-" else delta


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling of `delta` in the playbook units."""
    minutes = int(delta.total_seconds() // 60)
    sign, minutes = ("-", -minutes) if minutes < 0 else ("", minutes)
    for unit, size in (("w", 7 * 24 * 60), ("d", 24 * 60), ("h", 60)):
        if minutes and minutes % size == 0:
            return f"{sign}{minutes // size}{unit}"
    return f"{sign}{minutes}m"


def parse_percent(text: str) -> float:
    """`10%` -> 0.10; only 0% to 100% are percentages of something."""
    if not isinstance(text, str) or not _PERCENT.fullmatch(text.strip()):
        raise ValueError(f"malformed percentage {text!r}: expected a number and %, like 10%")
    value = float(text.strip()[:-1])
    if value > 100:
        raise ValueError(f"percentage {text!r} is over 100%")
    return value / 100


def _duration_validator(signed: bool) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, timedelta):
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected a duration like 30d, got {value!r}")
        return parse_duration(value, signed=signed)

    return check


def _percent_validator(value: Any) -> Any:
    if isinstance(value, float) and 0 <= value <= 1:
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a percentage like 10%, got {value!r}")
    return parse_percent(value)


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration_validator(signed=False)),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["30d"]}),
]
SignedDuration = Annotated[
    timedelta,
    BeforeValidator(_duration_validator(signed=True)),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": SIGNED_DURATION_PATTERN, "examples": ["-7d"]}),
]
Percent = Annotated[
    float,
    BeforeValidator(_percent_validator),
    PlainSerializer(lambda v: f"{v * 100:g}%", return_type=str),
    WithJsonSchema({"type": "string", "pattern": PERCENT_PATTERN, "examples": ["10%"]}),
]
