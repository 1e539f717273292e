"""One row of a customer or event file -> column values, or every reason why it cannot be.

Rows are in Retain's standard shape (DESIGN section 5). Values from CSV are strings, from JSONL
(or from code) they may be typed; an empty string or null means "no value". Checking a row
collects all of its problems, so a user fixes a line once, not once per problem.

Choices made here, in one place:

- Times are ISO 8601; a time without an offset is UTC, one with an offset is converted to UTC.
  `datetime` objects are accepted from code. Event times leave here as text in the exact format
  SQLAlchemy's SQLite DateTime stores (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC), so raw inserts, SQL
  comparisons and `UTCDateTime` reads all agree.
- `tags` in CSV are separated by commas (`"vip, newsletter"`); in JSONL they are a list (a
  string is split the same way). Whitespace is trimmed, empty and repeated tags are dropped.
- Event `amount` and `score` go to the typed columns and are NOT kept in `properties`; every
  other property stays there (CSV: every extra non-empty column, as text; JSONL: the
  `properties` object plus any extra top-level key).
- Customer columns other than the standard ones go to `attributes`; in JSONL an `attributes`
  object is merged in as well. An attribute given without a value is removed.
- A `_reason` column or key is ignored: `--rejects` writes it beside each rejected row, so a
  fixed rejects file syncs back as it is.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache, partial
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.clock import aware_utc

CUSTOMER_COLUMNS = ("email", "name", "created_at", "birthday", "timezone", "country", "segment",
                    "tags")
EVENT_COLUMNS = ("event_id", "customer_id", "type", "occurred_at")
EVENT_IDENTIFIERS = ("event_id", "customer_id", "type")
"""Required text: a row without one of them is rejected (`missing event_id`)."""
EVENT_NUMBERS = ("amount", "score")
"""Optional finite numbers, kept in typed columns rather than in `properties`."""
REASON_KEY = "_reason"  # written by `--rejects` beside each rejected row; ignored when read back
_NOT_PROPERTIES = frozenset((*EVENT_COLUMNS, "properties", REASON_KEY))


@dataclass(frozen=True)
class TypeRule:
    """What events of one type must say beyond the common columns, and what to tell a user who
    broke it. `column` is one of EVENT_NUMBERS; `required`: it must be given; `low`/`high`: the
    bounds it must lie within (inclusive). A broken rule rejects the row, or with `warn` keeps
    it and lists it as a warning."""

    type: str
    column: str
    message: str
    required: bool = False
    low: float | None = None
    high: float | None = None
    warn: bool = False

    def broken(self, amount: float | None, score: float | None) -> bool:
        """Whether an event of this type with these numbers breaks the rule."""
        value = amount if self.column == "amount" else score
        if value is None:
            return self.required
        return (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high)

    def problem(self, amount: float | None, score: float | None) -> str:
        """The message for a row that breaks the rule, with the value it gave."""
        value = amount if self.column == "amount" else score
        shown = "missing" if value is None else f"{value:g}"
        return f"{self.type} {self.column} {shown}: {self.message}"


TYPE_RULES = (
    TypeRule("purchase", "amount", low=0, message=(
        "cannot be negative; a refund or cancellation is its own event type (e.g. `return`,"
        " whose amount may be negative)")),
    TypeRule("feedback", "score", low=0, high=10, message="must be from 0 to 10 (NPS)"),
    TypeRule("feedback", "score", required=True, warn=True, message=(
        "kept, but it is no NPS answer: negative_feedback and the NPS report skip it, and"
        " last_feedback_score reads none until the next scored feedback")),
)
"""The rules per event type, in one place: the per-row checks, the fast paths and the arrow path
(vectorised from this table) all read them, so every path treats the same rows alike."""
REJECTING: dict[str, tuple[TypeRule, ...]] = {}
WARNING: dict[str, tuple[TypeRule, ...]] = {}
for _rule in TYPE_RULES:
    _by_type = WARNING if _rule.warn else REJECTING
    _by_type[_rule.type] = (*_by_type.get(_rule.type, ()), _rule)


def event_warning(values: EventValues) -> str | None:
    """Why a valid event row is worth a second look (TYPE_RULES with `warn`), if it is."""
    for rule in WARNING.get(values[2], ()):
        if rule.broken(values[4], values[5]):
            return rule.problem(values[4], values[5])
    return None
json_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                             default=str).encode
"""JSON as sync stores it; ValueError for NaN or Infinity, which PostgreSQL's jsonb refuses."""
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

EventValues = tuple[str, str, str, str, float | None, float | None, str]
"""(event_id, customer_id, type, occurred_at as stored text, amount, score, properties JSON)."""


class RowProblem(ValueError):
    """A row that cannot be synced; the message lists every reason, separated by `; `."""


@dataclass
class CustomerValues:
    """What one customer row says: its own columns (None = no value), and attribute changes."""

    customer_id: str
    columns: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)

    def merge(self, later: CustomerValues) -> None:
        """Fold a later row for the same customer into this one: later values win, except an
        empty created_at, which keeps the earlier one as an update would (so the outcome does
        not depend on whether the two rows fall in one batch)."""
        created = self.columns.get("created_at")
        self.columns.update(later.columns)
        if created is not None and self.columns.get("created_at") is None:
            self.columns["created_at"] = created
        for key in later.removed:
            self.attributes.pop(key, None)
        self.removed = (self.removed - later.attributes.keys()) | later.removed
        self.attributes.update(later.attributes)

    def apply_attributes(self, existing: dict[str, Any]) -> dict[str, Any]:
        """The customer's attributes after this row: merged into the existing ones."""
        merged = {k: v for k, v in existing.items() if k not in self.removed}
        merged.update(self.attributes)
        return merged


def blank(value: Any) -> bool:
    """True for "no value": None, or a string with nothing but whitespace."""
    return value is None or value == "" or (value.__class__ is str and value.isspace())


def utc_text(moment: datetime) -> str:
    """A time as SQLAlchemy's SQLite DateTime stores it: naive UTC text with microseconds."""
    offset = moment.utcoffset()
    if offset:
        moment -= offset
    return moment.isoformat(" ", "microseconds")[:26]  # without the "+00:00" of aware times


def parse_time(value: Any) -> datetime:
    """An aware UTC datetime from ISO 8601 text or a datetime; ValueError otherwise."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.strip())
    else:
        raise ValueError(value)
    return aware_utc(moment)


def event_values(row: dict[str, Any]) -> EventValues:
    """The values of one event row, or RowProblem with every reason it is bad.

    This is the one entry for every way an event comes in (files, the arrow path's leftovers,
    the daemon's API). Most rows are well formed: a fast path accepts only what the definition
    surely accepts (text ids, an ISO time, plain numbers, no broken REJECTING rule) and sends
    anything else (typed ids, missing values, padded times...) to `_checked_event_values`, the
    definition, which names every problem. The arrow path does the same by column, from the
    same EVENT_IDENTIFIERS, EVENT_NUMBERS and TYPE_RULES.
    """
    try:
        event_id, customer_id, kind = (row["event_id"].strip(), row["customer_id"].strip(),
                                       row["type"].strip())
        if not (event_id and customer_id and kind):
            raise ValueError(event_id)
        when = _fast_time(row["occurred_at"])
        properties = {k: v for k, v in row.items()
                      if v is not None and v != "" and k not in _NOT_PROPERTIES}
        nested = row.get("properties")
        if nested is not None:
            properties.update((k, v) for k, v in nested.items() if v is not None)
        amount, score = properties.pop("amount", None), properties.pop("score", None)
        if amount is not None:
            amount = _fast_number(amount)
        if score is not None:
            score = _fast_number(score)
        rules = REJECTING.get(kind)
        if rules and any(rule.broken(amount, score) for rule in rules):
            raise ValueError(kind)
        text = json_text(properties) if properties else "{}"
    except (KeyError, AttributeError, TypeError, ValueError, OverflowError):
        return _checked_event_values(row)
    return event_id, customer_id, kind, when, amount, score, text


def _fast_time(value: str) -> str:
    """utc_text(parse_time(value)) for ISO text, cheaply: slicing when it is already UTC."""
    moment = datetime.fromisoformat(value)  # validates, whatever the shortcut below does
    if len(value) in (19, 20) and value[4] == "-" and value[13] == ":" and value[16] == ":" and (
            len(value) == 19 or value[19] == "Z"):
        return f"{value[:10]} {value[11:19]}.000000"
    return utc_text(moment)


def _fast_number(value: Any) -> float:
    if value.__class__ not in (str, int, float):
        raise TypeError(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _checked_event_values(row: dict[str, Any]) -> EventValues:
    problems: list[str] = []
    event_id, customer_id, kind = (_identifier(row, key, problems) for key in EVENT_IDENTIFIERS)
    occurred = row.get("occurred_at")
    when = ""
    if blank(occurred):
        problems.append("missing occurred_at")
    else:
        try:
            when = utc_text(parse_time(occurred))
        except (ValueError, OverflowError):
            problems.append(f"bad occurred_at {occurred!r}: not an ISO 8601 time")
    properties = _properties(row, problems)
    given = {key: properties.pop(key, None) for key in EVENT_NUMBERS}
    amount, score = (_number(given[key], key, problems) for key in EVENT_NUMBERS)
    _check_type_rule(kind, {"amount": amount, "score": score}, given, problems)
    text = _json_or_problem(properties, "properties", problems)
    if problems:
        raise RowProblem("; ".join(problems))
    return event_id, customer_id, kind, when, amount, score, text


def _check_type_rule(kind: str, numbers: dict[str, float | None], given: dict[str, Any],
                     problems: list[str]) -> None:
    """Add the problems of broken rejecting TYPE_RULES (not when their number was unreadable)."""
    for rule in REJECTING.get(kind, ()):
        if numbers[rule.column] is None and not blank(given[rule.column]):
            continue  # the number itself is bad: already a problem
        if rule.broken(numbers["amount"], numbers["score"]):
            problems.append(rule.problem(numbers["amount"], numbers["score"]))


def _json_or_problem(value: dict[str, Any], key: str, problems: list[str]) -> str:
    try:
        return json_text(value)
    except ValueError:
        problems.append(f"bad {key}: NaN and Infinity are not numbers JSON can store")
        return "{}"


def customer_values(row: dict[str, Any]) -> CustomerValues:
    """The values of one customer row, or RowProblem with every reason it is bad."""
    problems: list[str] = []
    result = CustomerValues(_identifier(row, "customer_id", problems))
    columns = result.columns
    for key, value in row.items():
        parse = CUSTOMER_PARSERS.get(key)
        if parse is not None:
            if blank(value):
                columns[key] = None
                continue
            try:
                columns[key] = parse(value)
            except ValueError as exc:
                problems.append(str(exc))
        elif key in ("customer_id", REASON_KEY):
            continue
        elif key == "attributes" and isinstance(value, dict):
            for name, item in value.items():
                _attribute(result, name, item)
        else:
            _attribute(result, key, value)
    if result.columns.get("tags", ()) is None:
        result.columns["tags"] = []
    if any(value.__class__ is not str for value in result.attributes.values()):
        _json_or_problem(result.attributes, "attributes", problems)
    if problems:
        raise RowProblem("; ".join(problems))
    return result


def _attribute(result: CustomerValues, key: str, value: Any) -> None:
    if blank(value):
        result.attributes.pop(key, None)
        result.removed.add(key)
    else:
        result.attributes[key] = value
        result.removed.discard(key)


def _identifier(row: dict[str, Any], key: str, problems: list[str]) -> str:
    value = row.get(key)
    if blank(value):
        problems.append(f"missing {key}")
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    problems.append(f"bad {key} {value!r}: expected text")
    return ""


def _properties(row: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    properties = {k: v for k, v in row.items()
                  if v is not None and v != "" and k not in _NOT_PROPERTIES}
    nested = row.get("properties")
    if isinstance(nested, dict):
        properties.update((k, v) for k, v in nested.items() if v is not None)
    elif not blank(nested):
        problems.append("bad properties: expected a JSON object")
    return properties


def _number(value: Any, key: str, problems: list[str]) -> float | None:
    if blank(value):
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(value)
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer too large for a float
        number = math.nan
    if math.isfinite(number):
        return number
    problems.append(f"bad {key} {value!r}: not a number")
    return None


def _text(key: str, value: Any) -> str:
    if value.__class__ is str:
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"bad {key} {value!r}: expected text")


def _email(value: Any) -> str:
    text = _text("email", value)
    if not EMAIL.fullmatch(text):
        raise ValueError(f"bad email {value!r}: not an email address")
    return text


def _created_at(value: Any) -> datetime:
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        raise ValueError(f"bad created_at {value!r}: not an ISO 8601 time") from None


def _birthday(value: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"bad birthday {value!r}: not a date (YYYY-MM-DD)") from None


@lru_cache(maxsize=1024)
def known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _timezone(value: Any) -> str:
    name = _text("timezone", value)
    if not known_zone(name):
        raise ValueError(f"unknown time zone {value!r}")
    return name


def split_tags(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"bad tags {value!r}: expected text separated by commas, or a list")
    return list(dict.fromkeys(tag.strip() for tag in items if tag.strip()))


CUSTOMER_PARSERS: dict[str, Callable[[Any], Any]] = {
    "email": _email, "name": partial(_text, "name"), "created_at": _created_at,
    "birthday": _birthday, "timezone": _timezone, "country": partial(_text, "country"),
    "segment": partial(_text, "segment"), "tags": split_tags,
}
"""Each customer column's parser: a value (never blank) -> the column value, or ValueError."""
