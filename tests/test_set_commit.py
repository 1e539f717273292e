"""The set-based commit (engine/plan/set_plan.py, engine/outbox/set_commit.py) writes exactly
what the per-customer planner decides, on both databases.

Each SQL twin is compared with its Python original value by value: templates against Jinja
(`render`, its header and size refusals included), holdout against `in_holdout`, keys against
`action_key`. Then whole live runs: what they commit is the dry-run's plan, row by row, for
customers whose names SQL renders and for those it leaves to the planner (a line break in a
name a title prints: that action is dead, as the dry-run says).
"""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from outbox_support import select_actions
from test_evaluate_triggers import AS_OF, add_customers, add_events, ago, customer, playbook

from engine.config import Settings
from engine.errors import TemplateError
from engine.format.template_sql import SAFE_CHARS, template_sql
from engine.format.templates import Inline, make_environment, render
from engine.outbox import set_commit
from engine.outbox.commit import StagePlan
from engine.outbox.dispatch import dispatch
from engine.outbox.run import run_cycle
from engine.plan.build import make_plan
from engine.plan.planner import action_key, in_holdout
from engine.plan.set_plan import holdout_sql, holdout_threshold, key_sql
from engine.store import status as st
from engine.store.tables import customers, enrollments, tasks

MAX_ROWS = set_commit.MAX_ROWS

NAMES = [None, "", "Ana", "O'Brien", 'say "hi"', "back\\slash", "100%_x", "Zoë 🎉", "tab\there",
         "line\nbreak", "cr\rhere", "ls\u2028sep", "nel\x85x", "=?utf-8?q?a=0Ab?=", "a=?b", "?x",
         "x=", "{{ not a template }}", "x" * (SAFE_CHARS - 5), "y" * (SAFE_CHARS + 10)]
TEMPLATES = ["Call {{ customer.name }}", "{{customer.name}}{{ customer.email }}",
             "Hi {{ customer.name }} from {{ playbook.name }} ({{ playbook.id }})",
             "  {{- customer.name -}}  tail", "Say ={{ customer.name }}", "{{ customer.name }}\n",
             "no variables at all", "{# a comment #}{{ customer.country }}!"]
NOT_TRANSLATED = ["{{ customer.name | upper }}", "{% if customer.name %}x{% endif %}",
                  "{{ customer.purchase_count }}", "{{ event.type }}", "{{ unsubscribe_url }}",
                  "{{ customer.attributes.plan }}", "{{ customer['name'] }}", "{{ 'x' }}",
                  "{{ customer.last_active_at }}", "{{ playbook.version }}", "{{ customer. }}"]
PLAYBOOK = {"id": "pb-1", "name": "Win back"}


def _people(db: sa.Engine) -> list[str]:
    rows = [customer(f"c{i:02d}", name=name, email=f"c{i}@example.com", country="FR")
            for i, name in enumerate(NAMES) if name is not None]
    rows.append(customer("nameless", email="n@example.com"))
    with db.begin() as connection:  # the sync refuses some of these names; the store does not
        for row in rows:
            connection.execute(customers.insert().values(
                customer_id=row["customer_id"], name=row.get("name"), email=row["email"],
                country=row.get("country"), tags=[], file_tags=[], tags_added=[],
                tags_removed=[], attributes={}, purchase_count=0, total_spent=0,
                points_balance=0))
    return [row["customer_id"] for row in rows]


@pytest.mark.parametrize("header", [True, False])
def test_a_translated_template_renders_what_jinja_renders_or_is_left_to_jinja(
        db: sa.Engine, header: bool) -> None:
    ids = _people(db)
    environment = make_environment()
    with db.connect() as connection:
        records = {r["customer_id"]: dict(r) for r in connection.execute(
            sa.select(customers)).mappings()}
        for source in TEMPLATES:
            translated = template_sql(environment, Inline(source, header=header), PLAYBOOK)
            assert translated is not None, source
            found = {r[0]: (r[1], bool(r[2])) for r in connection.execute(
                sa.select(customers.c.customer_id, translated.text, translated.safe))}
            exact = 0
            for customer_id in ids:
                text, safe = found[customer_id]
                context = {"customer": records[customer_id], "playbook": PLAYBOOK}
                try:
                    expected: str | None = render(environment, source, context, header=header)
                except TemplateError:
                    expected = None  # refused: a line break, an encoded one, or too long
                if safe:
                    exact += 1
                    assert text == expected, (source, customer_id)
            if header and "\n" in source:  # every title it makes has a line break
                assert exact == 0
            else:  # plain names are translated
                assert exact >= len(ids) - 8, (source, exact)


def test_templates_that_need_jinja_are_not_translated() -> None:
    environment = make_environment()
    for source in NOT_TRANSLATED:
        assert template_sql(environment, Inline(source), PLAYBOOK) is None, source
    assert template_sql(environment, Inline("<b>{{ customer.name }}</b>"), PLAYBOOK) is not None


@pytest.mark.parametrize("share", [0.0, 1e-12, 0.1, 1 / 3, 0.5, 0.999999, 1.0])
def test_holdout_in_sql_is_in_holdout(db: sa.Engine, tmp_path: Path, share: float) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30 }", more=f"holdout: {share!r}\n"
                  if 0 < share < 1 else ("holdout: 1.0\n" if share == 1 else ""))
    threshold = holdout_threshold(share)
    assert threshold == 0 or (threshold - 1) / 2**64 < share <= threshold / 2**64
    rng = random.Random(7)
    pairs = [(f"c{rng.randrange(10**9)}", f"2024-0{rng.randrange(1, 9)}-01T00:00:00Z")
             for _ in range(300)] + [("Zoë", "é"), ("x" * 80, "occ")]
    with db.connect() as connection:
        for customer_id, occurrence in pairs:
            got = connection.execute(sa.select(holdout_sql(
                pb, sa.literal(customer_id), sa.literal(occurrence)))).scalar_one()
            assert bool(got) == in_holdout(pb, customer_id, occurrence), (customer_id, share)


def test_keys_in_sql_are_action_keys(db: sa.Engine, tmp_path: Path) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30 }", pid="p" * 60)
    with db.connect() as connection:
        for customer_id in ("c1", "Zoë 🎉", "é" * 60, "x" * 200, "with/slash"):
            for stage, step in ((0, 0), (0, 3), (2, 11)):
                got = connection.execute(sa.select(key_sql(
                    pb, sa.literal(customer_id), sa.literal("occ-1"), stage, step))).scalar_one()
                assert got == action_key(pb, customer_id, "occ-1", stage, step)


TASKS = ('  - task: { title: "Call {{ customer.name }}", assignee: care, due_in: 2d,\n'
         '           note: "For {{ playbook.name }}" }\n'
         '  - points: { amount: 50, reason: welcome }\n'
         '  - tag: { add: [winback] }\n'
         '  - wait: 3d\n'
         '  - email: { subject: "Hi {{ customer.name }}", body: "Back?" }\n')


def _committed(db: sa.Engine) -> tuple[list[tuple[Any, ...]], set[tuple[Any, ...]]]:
    with db.connect() as connection:
        enrolled = [(r.customer_id, r.occurrence_key, r.event_id, bool(r.holdout), r.status,
                     r.wake_at, r.ended_at, r.end_reason) for r in connection.execute(
            sa.select(enrollments).order_by(enrollments.c.customer_id))]
        outbox = {(r.customer_id, r.idempotency_key, r.step, r.connector, r.status,
                   r.next_attempt_at, r.reason, json.dumps(r.payload, sort_keys=True))
                  for r in connection.execute(select_actions())}
    return enrolled, outbox


def _planned(db: sa.Engine, pb: Any) -> tuple[list[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """The dry-run's plan in the committed rows' shape (payloads: the planner's fields)."""
    return _planned_at(db, pb, AS_OF)


def _planned_at(db: sa.Engine, pb: Any, as_of: datetime
                ) -> tuple[list[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """`_planned` at `as_of`, for a playbook whose first wait ends `StagePlan` later."""
    wake = StagePlan(pb).wake_at(as_of, 0)
    with db.connect() as connection:
        planned = list(make_plan(connection, [pb], as_of).playbooks[0].enrollments())
    enrolled, outbox = [], set()
    for e in sorted(planned, key=lambda e: (e.customer_id, e.occurrence)):
        done = e.holdout or wake is None
        enrolled.append((e.customer_id, e.occurrence, e.event_id, e.holdout,
                         st.COMPLETED if done else st.WAITING_STEP,
                         None if e.holdout else wake, as_of if done else None,
                         "holdout" if e.holdout else None))
        for a in e.actions:
            if a.commit_now:
                fields = {} if a.status == st.DEAD else a.to_json()["fields"]
                outbox.add((e.customer_id, a.key, a.step, a.kind, a.status, a.run_at, a.reason,
                            json.dumps(fields, sort_keys=True)))
    return enrolled, outbox


@pytest.mark.parametrize(("holdout", "rows_per_slice"),
                         [("", MAX_ROWS), ("holdout: 0.3\n", MAX_ROWS), ("", 21)])
def test_a_live_run_in_sql_commits_the_dry_run_plan(db: sa.Engine, tmp_path: Path,
                                                    holdout: str, rows_per_slice: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(set_commit, "MAX_ROWS", rows_per_slice)  # 21: slices of 3 (SQLite)
    _people(db)
    with db.begin() as connection:
        connection.execute(customers.update().values(last_active_at=ago(days=45)))
    pb = playbook(tmp_path, "inactive: { days: 30 }", actions=TASKS, more=holdout)
    with db.connect() as connection:
        live = make_plan(connection, [pb], AS_OF, show=0, complete=False,
                         unsubscribe=lambda address: "https://x.example/u")
        assert live.playbooks[0].set_plan is not None  # the SQL path is the one under test
    expected = _planned(db, pb)
    settings = Settings.model_validate({"email_transport": "file",
                                        "email_dir": str(tmp_path / "mail")})
    report = run_cycle(db, [pb], AS_OF, settings, dispatch=False)
    committed = _committed(db)
    assert committed == expected
    dead = {row[0] for row in committed[1] if row[4] == st.DEAD}
    assert dead >= {"c09", "c10", "c13"} - {row[0] for row in committed[0] if row[3]}
    line = report.playbooks[pb.id]
    assert line.entered == len(expected[0])
    assert line.holdout == sum(1 for row in expected[0] if row[3])
    assert sum(line.committed.values()) == len(expected[1])
    again = run_cycle(db, [pb], AS_OF, settings, dispatch=False)
    assert (again.playbooks[pb.id].entered, sum(again.playbooks[pb.id].committed.values())) == (
        0, 0)
    assert _committed(db) == expected
    dispatch(db, settings, AS_OF)  # the dispatcher reads the payloads SQL built
    with db.connect() as connection:
        titles = dict(connection.execute(sa.select(tasks.c.customer_id, tasks.c.title)).all())
    planned_titles = {row[0]: json.loads(row[7])["title"] for row in expected[1]
                      if row[3] == "task" and row[4] == st.PLANNED}
    assert titles == planned_titles and titles


def test_an_event_trigger_in_sql_keeps_the_event(db: sa.Engine, tmp_path: Path) -> None:
    add_customers(db, customer("a", name="Ann"), customer("b", name="Bo"), customer("c"))
    add_events(db, ("e1", "a", "purchase", ago(days=1), {"amount": 10}),
               ("e2", "b", "purchase", ago(days=2), {"amount": 20}))
    pb = playbook(tmp_path, "first_purchase: { lookback: 30d }",
                  actions='  - task: { title: "Thank {{ customer.name }}" }\n')
    expected = _planned(db, pb)
    run_cycle(db, [pb], AS_OF, Settings(), dispatch=False)
    enrolled, outbox = _committed(db)
    assert [(row[0], row[1], row[2]) for row in enrolled] == [("a", "e1", "e1"), ("b", "e2", "e2")]
    assert outbox == expected[1]


def test_email_caps_and_quiet_hours_keep_the_per_customer_path(db: sa.Engine,
                                                               tmp_path: Path) -> None:
    pb_task = playbook(tmp_path, "inactive: { days: 30 }", pid="task")
    pb_mail = playbook(tmp_path, "inactive: { days: 30 }", pid="mail",
                       actions='  - email: { subject: "Hi", body: "Back?" }\n')
    add_customers(db, customer("a", email="a@example.com", last_active_at="2024-01-01T00:00:00Z"))
    quiet = Settings.model_validate({"quiet_hours": {"task": "22:00-06:00"}})
    with db.connect() as connection:
        link = {"unsubscribe": lambda address: "https://x.example/u"}
        plain = make_plan(connection, [pb_task, pb_mail], AS_OF, show=0, complete=False, **link)
        held = make_plan(connection, [pb_task], AS_OF, show=0, complete=False, settings=quiet,
                         **link)
        dry = make_plan(connection, [pb_task], AS_OF, show=0, complete=False)
    assert {p.playbook.id: p.set_plan is not None for p in plain.playbooks} == {
        "task": True, "mail": False}
    assert held.playbooks[0].set_plan is None and dry.playbooks[0].set_plan is None
