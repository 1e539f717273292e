"""`retain explain`: why one customer does or does not enter one playbook.

Every clause is evaluated with the same compiled SQL the playbook's query uses (engine/format/compile.py,
engine/format/triggers.py), for the one customer, in one SELECT: what `explain` says is what the
evaluation does. Each clause gets its path, what it wants, the customer's actual value and the
result; combinators (`any`, `all`, `not`) show their own result above their items.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.clock import iso
from engine.format.compile import CompileContext, compile_condition, customer_field, events_measure
from engine.format.conditions import AllOf, AnyOf, Condition, EventsTest, FieldTest, Not
from engine.format.playbook import Every, Playbook
from engine.format.yamlsource import dotted
from engine.query.evaluate import candidates, compose, prepare
from engine.store.dialect import Bool, Column
from engine.store.facts import customers, existed_at


@dataclass(frozen=True)
class Clause:
    """One line of an explanation."""

    path: str
    depth: int
    wanted: str
    actual: Any
    result: bool


@dataclass(frozen=True)
class Explanation:
    """The clauses, and the verdict with the occurrences entered or kept out by re-entry."""

    playbook: Playbook
    customer_id: str
    as_of: datetime
    historical: bool
    clauses: list[Clause]
    entering: list[str]  # occurrence keys the customer enters for
    kept_out: list[str]  # occurrence keys trigger and when allow but re-entry refuses
    existed: bool  # the customer was created by as_of

    def to_json(self) -> dict[str, Any]:
        """The explanation as plain data."""
        return {"playbook": self.playbook.id, "customer_id": self.customer_id,
                "as_of": iso(self.as_of), "historical": self.historical,
                "enters": bool(self.entering), "occurrences": self.entering,
                "kept_out_by_reentry": self.kept_out, "existed": self.existed,
                "clauses": [{"path": c.path, "depth": c.depth, "wanted": c.wanted,
                             "actual": show_value(c.actual), "result": c.result}
                            for c in self.clauses]}


def show_value(value: Any) -> Any:
    """A value as people read it: times in ISO, durations in days, the rest unchanged."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return words(value)
    return value


def words(delta: timedelta) -> str:
    """A duration as the playbook would write it (`30d`, `12h`, `15m`, else seconds)."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def explain(connection: sa.Connection, playbook: Playbook, customer_id: str,
            as_of: datetime) -> Explanation:
    """Evaluate each clause of `playbook` for one customer at `as_of` (reads only)."""
    moment = prepare(connection, as_of, [playbook])
    tc = moment.trigger_context(playbook.id)
    part = playbook.trigger.sql(tc, playbook.document.backfill)
    terms: list[tuple[str, int, str, Column | None, Bool]] = []
    if part.event is None:
        fired: Bool = sa.and_(sa.true(), *part.where)
    else:
        fired = sa.exists().where(part.event.c.customer_id == customers.c.customer_id, *part.where)
    kind = next(iter(playbook.document.trigger))
    terms.append((f"trigger.{kind}", 0, playbook.trigger.wanted(), playbook.trigger.actual(tc),
                  fired))
    _walk(tc.compile, playbook.when, 0, terms)
    columns = []
    for index, (_, _, _, actual, test) in enumerate(terms):
        columns.append((actual if actual is not None else sa.null()).label(f"a{index}"))
        columns.append(test.label(f"t{index}"))
    columns.append(existed_at(as_of).label("existed"))
    row = connection.execute(sa.select(*columns).where(
        customers.c.customer_id == customer_id)).mappings().one()
    clauses = [Clause(path, depth, wanted, row[f"a{i}"], bool(row[f"t{i}"]))
               for i, (path, depth, wanted, _, _) in enumerate(terms)]
    entering = [c.occurrence for c in candidates(connection, compose(playbook, tc, part,
                                                                      customer_id))]
    allowed = [c.occurrence for c in candidates(
        connection, compose(playbook, tc, part, customer_id, reentry=False))]
    clauses.append(Clause("reentry", 0, _reentry_words(playbook),
                          ", ".join(allowed) or None, bool(entering) or not allowed))
    return Explanation(playbook, customer_id, as_of, moment.historical, clauses, entering,
                       [key for key in allowed if key not in entering], bool(row["existed"]))


def _reentry_words(playbook: Playbook) -> str:
    reentry = playbook.document.reentry
    if isinstance(reentry, Every):
        return f"not enrolled for this occurrence, nor within {words(reentry.every)} before"
    return "not enrolled before for this occurrence"


def _walk(ctx: CompileContext, condition: Condition, depth: int,
          terms: list[tuple[str, int, str, Column | None, Bool]]) -> None:
    """Clauses in reading order; the `when:` list itself is not a line of its own."""
    if isinstance(condition, AllOf) and condition.path == ("when",):
        for item in condition.items:
            _walk(ctx, item, depth, terms)
        return
    path = dotted(condition.path)
    test = compile_condition(ctx, condition)
    if isinstance(condition, FieldTest):
        wanted = f"{condition.operator} {_wanted_value(condition.value)}"
        terms.append((path, depth, wanted, customer_field(ctx, condition.field), test))
    elif isinstance(condition, EventsTest):
        window = f" within {words(condition.within)}" if condition.within else ""
        what = f"{condition.type or 'any'} events{window}"
        measure = "count" if condition.measure == "count" else f"sum of {condition.sum_field}"
        tests = ", ".join(f"{name} {_wanted_value(value)}" for name, value in condition.tests)
        terms.append((path, depth, f"{measure} of {what}: {tests}",
                      events_measure(ctx, condition), test))
    elif isinstance(condition, Not):
        terms.append((path, depth, "not (the item below)", None, test))
        _walk(ctx, condition.item, depth + 1, terms)
    else:
        word = "any of" if isinstance(condition, AnyOf) else "all of"
        terms.append((path, depth, f"{word} the items below", None, test))
        for item in condition.items:
            _walk(ctx, item, depth + 1, terms)


def _wanted_value(value: Any) -> str:
    """A wanted value as the playbook spells it: lists in brackets, true/false in lower case."""
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_wanted_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(show_value(value))
