"""Comparing an `expect` step with what happened: each key wanted against what the last run
did or the store holds now, and for each difference the lines a person needs to see it.

Who did not enter is explained with `retain explain`'s clauses, at the last run's clock; an
action wanted but not found is shown beside the nearest one the run did produce (same kind
and customer), field by field.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.clock import aware_utc, iso
from engine.playtest.load import Step
from engine.playtest.model import ACTION_LISTS, Expect, resolve_time
from engine.playtest.run import ActionRow, Failure, State, read_enrollments
from engine.store.status import WAITING
from engine.store.tables import customers


def check(state: State, step: Step) -> list[Failure]:
    """Every difference between this `expect` and the test's state."""
    expect: Expect = step.value
    failures: list[Failure] = []
    playbook = expect.playbook or state.loaded.playbooks[0]

    def fail(key: str | tuple[Any, ...], lines: list[str]) -> None:
        path = (key,) if isinstance(key, str) else key
        failures.append(Failure(state.loaded.where((*step.path, *path), "key"),
                                "expect." + ".".join(str(p) for p in path), lines))

    last_keys = [name for name, value in expect if value is not None
                 and name not in ("playbook", "enrollments", "customers")]
    if last_keys and state.last is None:
        fail(last_keys[0], ["no `run` step before this expectation: nothing ran yet"])
        return failures
    if state.last is not None:
        _check_last(state, expect, playbook, fail)
    if expect.enrollments is not None:
        _check_enrollments(state, expect.enrollments, playbook, fail)
    if expect.customers is not None:
        _check_customers(state, expect.customers, fail)
    return failures


def _check_last(state: State, expect: Expect, playbook: str, fail: Any) -> None:
    last = state.last
    assert last is not None
    entered = sorted(r.customer_id for r in last.entered
                     if r.playbook_id == playbook and not r.holdout)
    held = sorted(r.customer_id for r in last.entered if r.playbook_id == playbook and r.holdout)
    if expect.entered is not None and sorted(expect.entered) != entered:
        lines = _set_lines(expect.entered, entered)
        for customer_id in sorted(set(expect.entered) - set(entered)):
            lines += _why_not(state, playbook, customer_id, held)
        fail("entered", lines)
    if expect.holdout is not None and sorted(expect.holdout) != held:
        fail("holdout", _set_lines(expect.holdout, held))
    _check_not_entered(state, expect, playbook, entered, held, fail)
    for key, rows in (("exited", last.exited), ("converted", last.converted)):
        wanted = getattr(expect, key)
        got = sorted(r.customer_id for r in rows if r.playbook_id == playbook)
        if wanted is not None and sorted(wanted) != got:
            fail(key, _set_lines(wanted, got))
    if expect.over_limit is not None:
        line = last.report.playbooks.get(playbook)
        over = line.over_limit if line is not None else None
        if bool(over) != expect.over_limit:
            fail("over_limit", [f"wanted: {'over' if expect.over_limit else 'within'} its limits",
                                f"got:    {over or 'within its limits'}"])
    for key in ACTION_LISTS:
        wanted = getattr(expect, key)
        if wanted is not None:
            got = [row for row in last.actions if row.playbook_id == playbook
                   and _category(row.status) == key]
            _check_actions(state, key, wanted, got, fail, playbook)


def _check_not_entered(state: State, expect: Expect, playbook: str, entered: list[str],
                       held: list[str], fail: Any) -> None:
    assert state.last is not None
    last = state.last
    for customer_id, clause in (expect.not_entered or {}).items():
        if customer_id in entered or customer_id in held:
            fail(("not_entered", customer_id), [
                f"{customer_id} entered {playbook} in the run at {_when(last.clock)}"
                + (" (into the control group)" if customer_id in held else "")])
        elif clause is not None:
            failed = _failed_clauses(state, playbook, customer_id)
            if not any(clause.lower() in f"{path} {wanted}".lower() for path, wanted, _ in failed):
                fail(("not_entered", customer_id), [
                    f"wanted: kept out by a clause matching {clause!r}",
                    "got:    kept out by " + ("; ".join(_clause_words(c) for c in failed)
                                              or "no failing clause (re-entry or a limit?)")])


def _category(status: str) -> str:
    return "due" if status in WAITING else status


def _set_lines(wanted: list[str], got: list[str]) -> list[str]:
    return [f"wanted: {', '.join(sorted(wanted)) or '(none)'}",
            f"got:    {', '.join(got) or '(none)'}"]


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _failed_clauses(state: State, playbook: str, customer_id: str) -> list[tuple[str, str, Any]]:
    """(path, wanted, actual) of each clause that is false for the customer at the last run's
    clock, as `retain explain` shows them."""
    from engine.plan.planner import in_holdout
    from engine.query.explain import explain, show_value

    assert state.last is not None
    with state.engine.connect() as connection:
        found = explain(connection, state.playbooks[playbook], customer_id, state.last.clock,
                        holdout=in_holdout)
    return [(c.path, c.wanted, show_value(c.actual, money=c.money))
            for c in found.clauses if not c.result]


def _clause_words(clause: tuple[str, str, Any]) -> str:
    path, wanted, actual = clause
    return f"{path} (wanted {wanted}, was {actual!r})"


def _why_not(state: State, playbook: str, customer_id: str, held: list[str]) -> list[str]:
    if customer_id in held:
        return [f"{customer_id} entered the control group (holdout): it gets nothing"]
    failed = _failed_clauses(state, playbook, customer_id)
    return [f"{customer_id} was kept out by "
            + ("; ".join(_clause_words(c) for c in failed) or "no failing clause")]


# --- actions ------------------------------------------------------------------------------------


def _fields(row: ActionRow, clock: datetime) -> dict[str, Any]:
    """What an expectation may name of an action: its payload's fields, the email's plain text
    (`text`), why it was not sent (`reason`) and when it is due (`at`). A payload's own
    `reason` (a points action's) is what `reason` means for that action."""
    fields = dict(row.payload)
    if row.connector == "email" and "message" in fields:
        fields["text"] = _plain_text(fields["message"])
    fields.setdefault("reason", row.reason)
    fields["at"] = row.next_attempt_at
    fields["customer"] = row.customer_id
    return fields


@functools.lru_cache(maxsize=64)
def _plain_text(message: str) -> str:
    """An email's plain-text body (parsed once: each wanted email is matched against every
    email of the run)."""
    import email
    from email import policy

    parsed = email.message_from_string(message, policy=policy.default)
    part = parsed.get_body(preferencelist=("plain",))
    text = part.get_content() if part is not None else ""  # type: ignore[union-attr]
    return text.replace("\r\n", "\n")  # as the template wrote it, not the wire's CRLF


def _matches(wanted: Any, got: Any, clock: datetime, key: str) -> bool:
    if key == "at":
        try:
            return got is not None and resolve_time(wanted, clock) == aware_utc(got)
        except ValueError:
            return False
    if key in ("text", "reason", "message") and isinstance(wanted, str):
        return got is not None and wanted in str(got)  # a part of a long text
    if isinstance(wanted, int | float) and isinstance(got, int | float):
        return abs(float(wanted) - float(got)) < 1e-9
    return wanted == got or (got is not None and str(wanted) == str(got))


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return iso(aware_utc(value))
    return repr(value)


def _check_actions(state: State, key: str, wanted: list[dict[str, dict[str, Any]]],
                   got: list[ActionRow], fail: Any, playbook: str) -> None:
    assert state.last is not None
    clock = state.last.clock
    left = list(got)
    lines: list[str] = []
    for item in wanted:
        (kind, fields), = item.items()
        match = next((row for row in left if row.connector == kind and all(
            _matches(value, _fields(row, clock).get(name), clock, name)
            for name, value in fields.items())), None)
        if match is not None:
            left.remove(match)
            continue
        lines.append(f"wanted, not {_verb(key)}: {kind} to {fields['customer']}")
        near = next((row for row in left if row.connector == kind
                     and row.customer_id == fields["customer"]), None)
        if near is None:
            lines += _became(state, playbook, key, kind, fields["customer"])
            continue
        have = _fields(near, clock)
        for name, value in fields.items():
            if not _matches(value, have.get(name), clock, name):
                shown = _show(value) if name != "at" else iso(resolve_time(value, clock))
                lines.append(f"  {name}: wanted {shown}")
                lines.append(f"  {' ' * len(name)}  got    {_show(have.get(name))}")
        left.remove(near)
    for row in left:
        summary = _summary(row, clock)
        lines.append(f"{_verb(key)}, not wanted: {row.connector} to {row.customer_id}{summary}")
    if lines:
        fail(key, lines)


def _became(state: State, playbook: str, key: str, kind: str, customer_id: str) -> list[str]:
    """What the last run made instead of the action wanted under `key`: the playbook's actions
    of that kind for that customer under another key (`skipped (no email address)`)."""
    assert state.last is not None
    return [f"  the run made it {_category(row.status)}"
            + (f" ({row.reason})" if row.reason else "")
            for row in state.last.actions if row.playbook_id == playbook
            and row.connector == kind and row.customer_id == customer_id
            and _category(row.status) != key]


def _verb(key: str) -> str:
    return {"sent": "sent", "due": "due"}.get(key, key)


def _summary(row: ActionRow, clock: datetime) -> str:
    fields = _fields(row, clock)
    for name in ("subject", "title", "amount", "url"):
        if fields.get(name) is not None:
            return f" ({name} {fields[name]!r})"
    return ""


# --- the store now ------------------------------------------------------------------------------


def _check_enrollments(state: State, wanted: dict[str, str], playbook: str, fail: Any) -> None:
    latest: dict[str, str] = {}
    for row in read_enrollments(state.engine):
        if row.playbook_id == playbook:
            latest[row.customer_id] = row.status
    for customer_id, status in wanted.items():
        got = latest.get(customer_id, "none")
        if got != status:
            fail(("enrollments", customer_id), [f"wanted: {status}", f"got:    {got}"])


def _check_customers(state: State, wanted: dict[str, dict[str, Any]], fail: Any) -> None:
    c = customers.c
    with state.engine.connect() as connection:
        for customer_id, fields in wanted.items():
            row = connection.execute(sa.select(customers).where(
                c.customer_id == customer_id)).mappings().first()
            if row is None:
                fail(("customers", customer_id), [f"no customer {customer_id!r} in the store"])
                continue
            for name, value in fields.items():
                if not name.startswith("attributes.") and name not in row:
                    fail(("customers", customer_id, name), [
                        f"{name!r} is not a customer field (known: {', '.join(row.keys())})"])
                    continue
                got = _customer_field(row, name)
                if isinstance(got, datetime):
                    ok = _matches(value, got, state.clock, "at")
                else:
                    ok = _matches(value, got, state.clock, name)
                if not ok:
                    fail(("customers", customer_id, name),
                         [f"wanted: {value!r}", f"got:    {_show(got)}"])


def _customer_field(row: Any, name: str) -> Any:
    if name.startswith("attributes."):
        return (row["attributes"] or {}).get(name.removeprefix("attributes."))
    return row.get(name)
