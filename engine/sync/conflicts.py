"""Telling a repeated event apart from a conflicting one, and saying where the other one came from.

An `event_id` names one event. Seen again with the same contents it is a duplicate (a re-sync, an
overlapping export) and is skipped quietly; seen again with OTHER contents (another amount, time
or customer) one of the two rows is wrong, so it is a conflict: the stored event is kept and the
new row is listed, naming the line the stored one came from (in this sync), or "already in the
database" (synced before).

Checking costs nothing on a first load: only a batch in which some event was not inserted (its id
was known) compares. The database does the bulk of it (`differing_ids`): the batch, staged in a
temporary table, is joined to the events on `event_id` and only the ids whose stored contents may
differ come back; just those few are read back and judged here in Python (`same`), which stays
the one definition of "the same contents". Lines of the events a sync inserted are kept in a
`LineIndex`, 4 bytes per event, so memory stays small next to the batch being written.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from engine.sync.rows import EventValues, utc_text

LOOKUP_CHUNK = 5_000
COMPARED = ("customer_id", "type", "occurred_at", "amount", "score", "properties")
"""The contents of an event, in EventValues order after `event_id`."""
SHOWN_CHARS = 40

Contents = tuple[Any, ...]
"""An event's COMPARED values as read from either side (properties as JSON text or a dict)."""


class LineIndex:
    """The source line of each event inserted by this sync, by the event's row id.

    Row ids grow as events are inserted, so the lines sit in an array indexed by id minus the
    largest id before the sync (ids other writers took in between stay 0: not ours).
    """

    def __init__(self, base: int) -> None:
        self.base = base
        self.lines = array("I")

    def record(self, ids: Iterable[int], lines: Iterable[int]) -> None:
        """Remember that the event with each id came from the matching line."""
        for event_id, line in zip(ids, lines, strict=True):
            index = event_id - self.base - 1
            if index >= len(self.lines):
                self.lines.extend(bytes(4 * (index + 1 - len(self.lines))))
            self.lines[index] = line

    def record_run(self, last: int, lines: Sequence[int]) -> None:
        """The events with ids last-len(lines)+1 .. last came from these lines, in order."""
        start = last - len(lines) - self.base
        if start == len(self.lines):  # the usual case: right after the previous batch
            self.lines.extend(array("I", lines))
        else:
            self.record(range(last - len(lines) + 1, last + 1), lines)

    def line_of(self, event_id: int) -> int | None:
        """The line the event with this row id came from, or None when this sync did not insert it."""
        index = event_id - self.base - 1
        if 0 <= index < len(self.lines):
            return self.lines[index] or None
        return None


def contents(values: EventValues) -> Contents:
    """What a parsed row says about its event (everything but the id), comparable with `stored`."""
    return values[1:]


def same(new: Contents, old: Contents) -> bool:
    """Whether two events say the same; properties compare as values (key order aside).

    Properties are compared as text first: a re-sync of the same rows gives the same text as
    SQLite stored, so only a real difference (or PostgreSQL's parsed jsonb) pays for parsing.
    """
    return new[:5] == old[:5] and (new[5] == old[5] or _equal(_value(new[5]), _value(old[5])))


def _value(properties: str | dict[str, Any]) -> dict[str, Any]:
    return json.loads(properties) if isinstance(properties, str) else properties


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 = 1.0), but `true` is not `1` (as Python would say)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_equal, a, b))
    return bool(a == b)


DIFFERS = {
    "postgresql": "(e.customer_id, e.type, e.occurred_at, e.amount, e.score, e.properties)"
                  " IS DISTINCT FROM (b.customer_id, b.type, b.occurred_at, b.amount, b.score,"
                  " b.properties)",
    "sqlite": "e.customer_id IS NOT b.customer_id OR e.type IS NOT b.type"
              " OR e.occurred_at IS NOT b.occurred_at OR e.amount IS NOT b.amount"
              " OR e.score IS NOT b.score OR (e.properties IS NOT b.properties"
              " AND (NOT json_valid(e.properties) OR json(e.properties) IS NOT json(b.properties)))",
}
"""When a stored event `e` may say something else than the staged row `b`, per backend.

A filter that may only err towards "differs": whatever it lets through is judged by `same`, and
whatever it holds back must be a duplicate by `same` too. Typed columns compare as Python does
(text; times as UTC text on SQLite and timestamptz on PostgreSQL, both to the microsecond;
numbers by value, 1 = 1.0). Properties: on PostgreSQL as jsonb values (key order and 1.0 vs 1
aside, as `same`; `true` vs `1` differ in both); on SQLite
as text, then as minified text (`json()`, whitespace aside); key order or 1.0 vs 1 is let
through and judged in Python.
"""


def differing_ids(connection: sa.Connection, staged: str) -> set[str]:
    """The event_ids of the rows in the table `staged` whose stored event may say otherwise.

    `staged` has the columns of `COMPARED` plus `event_id`, one row per id. A row that was just
    inserted from it compares equal to itself, so only rows whose id was known can come back.
    """
    condition = DIFFERS[connection.dialect.name]
    return {event_id for event_id, in connection.exec_driver_sql(
        f"SELECT b.event_id FROM {staged} b JOIN events e ON e.event_id = b.event_id"
        f" WHERE {condition}")}


def stored(connection: sa.Connection, event_ids: list[str]) -> Iterator[tuple[str, int, Contents]]:
    """(event_id, row id, contents) of each stored event among `event_ids`."""
    postgres = connection.dialect.name == "postgresql"
    columns = "event_id, id, customer_id, type, occurred_at, amount, score, properties"
    for start in range(0, len(event_ids), LOOKUP_CHUNK):
        chunk = event_ids[start:start + LOOKUP_CHUNK]
        if postgres:
            rows = connection.exec_driver_sql(
                f"SELECT {columns} FROM events WHERE event_id = ANY(%s)", (chunk,))
        else:
            marks = ", ".join("?" * len(chunk))
            rows = connection.exec_driver_sql(
                f"SELECT {columns} FROM events WHERE event_id IN ({marks})", tuple(chunk))
        for event_id, row_id, customer_id, kind, when, amount, score, properties in rows.all():
            if not isinstance(when, str):  # PostgreSQL: an aware datetime
                when = utc_text(when)
            yield event_id, row_id, (customer_id, kind, when, amount, score, properties)


def conflict_reason(event_id: str, new: Contents, old: Contents, where: str) -> str:
    """Why a row conflicts: which values differ from the kept event, and where that one is from."""
    new, old = (*new[:5], _value(new[5])), (*old[:5], _value(old[5]))
    changed = [f"{name} {_shown(there)} there, {_shown(here)} here"
               for name, here, there in zip(COMPARED, new, old, strict=True)
               if not _equal(here, there)]
    return f"conflict: event_id {event_id!r} has other contents {where} ({'; '.join(changed)})"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        value += 0.0  # -0.0 (as one parser may keep "-0") reads 0.0, as it compares
    text = "none" if value is None else (
        json.dumps(value, ensure_ascii=False, sort_keys=True, default=str) if isinstance(value, dict) else
        repr(value))
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."
