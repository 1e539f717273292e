"""The set-based commit writes exactly the rows SQLAlchemy's row-by-row insert wrote, on both
databases (engine/outbox/bulk.py replaced it for speed; nothing else may change).

One live plan with every kind of row a commit writes: enrollments in and out of the holdout,
an email payload frozen with a non-ASCII name and a real unsubscribe link, actions deferred by
quiet hours, capped (a second email), skipped (no address), suppressed, dead (a template that fails for one
customer), times inside payloads. It is committed by `commit_playbook`, then the tables are
emptied and the same plan is written by the reference insert (the code this replaced); the
rows read back raw (SQLite: the stored text itself) must be the same, ids aside. Batches and
SQLite statements are made small so both split.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from outbox_support import select_actions
from test_evaluate_triggers import AS_OF, add_customers, customer, playbook

from engine.config import load_settings
from engine.consent import unsubscribe_links
from engine.outbox import bulk
from engine.outbox.commit import StagePlan, commit_playbook, insert_actions
from engine.plan import reader
from engine.plan.build import PlaybookPlan, make_plan
from engine.store import status as st
from engine.store.dialect import insert_ignoring
from engine.store.tables import actions, enrollments, payloads, suppressions

NO_PROJECT = Path(__file__).parent / "fixtures" / "playbooks"  # a folder without retain.toml
ACTIONS = ('  - email: { subject: "Wir vermissen Sie, {{ customer.name }}", body: "Komm zurück:'
           ' {{ unsubscribe_url }}" }\n'
           '  - email: { subject: "Noch einmal", body: "Zweite Mail" }\n'
           '  - task: { title: "Call {{ customer.attributes.phone }}", due_in: 2d }\n'
           '  - points: { amount: 200, reason: "winback bonus" }\n'
           '  - wait: 3d\n'
           '  - task: { title: "Second call {{ customer.name }}" }\n')


def shop(db: sa.Engine) -> None:
    people = [customer(f"c{i:02d}", email=f"c{i:02d}@example.com", name=f"Jürgen Ølsen {i}",
                       timezone="Europe/Berlin" if i % 3 else "America/New_York",
                       attributes={"phone": f"+49 {i}"} if i % 5 else {})
              for i in range(1, 19)]
    people += [customer(f"c8{i}", name="Ann Without Mail", attributes={"phone": "1"})
               for i in range(3)]
    add_customers(db, *people)
    with db.begin() as connection:
        connection.execute(sa.insert(suppressions), [
            {"email": "c05@example.com", "reason": "unsubscribed", "created_at": AS_OF}])


def reference_commit(writer: sa.Engine, plan: PlaybookPlan, as_of: datetime) -> None:
    """The commit as it was written before engine/outbox/bulk.py: SQLAlchemy's insert of one
    parameter dict per row, every value through its column type."""
    wake = StagePlan(plan.playbook).wake_at(as_of, 0)
    for batch in plan.batches():
        with writer.begin() as connection:
            rows = [{"playbook_id": plan.playbook.id, "version": plan.playbook.version,
                     "customer_id": e.customer_id, "occurrence_key": e.occurrence,
                     "event_id": e.event_id, "step": 0, "holdout": e.holdout,
                     "entered_at": as_of, "wake_at": None if e.holdout else wake,
                     "status": st.COMPLETED if e.holdout or wake is None else st.WAITING_STEP,
                     "ended_at": as_of if e.holdout or wake is None else None,
                     "end_reason": "holdout" if e.holdout else None} for e in batch]
            c = enrollments.c
            statement = insert_ignoring(enrollments, connection.dialect,
                                        ["playbook_id", "customer_id", "occurrence_key"])
            inserted = {(customer_id, occurrence): ident for ident, customer_id, occurrence in
                        connection.execute(statement.returning(c.id, c.customer_id,
                                                               c.occurrence_key), rows)}
            outbox = [{"playbook_id": plan.playbook.id,
                       "enrollment_id": inserted[(e.customer_id, e.occurrence)],
                       "customer_id": e.customer_id, "stage": a.stage, "step": a.step,
                       "connector": a.kind, "payload": a.to_json()["fields"],
                       "idempotency_key": a.key, "status": a.status, "reason": a.reason,
                       "last_error": a.reason if a.status == st.DEAD else None,
                       "attempts": 0, "next_attempt_at": a.run_at, "created_at": as_of,
                       "updated_at": as_of}
                      for e in batch for a in e.actions if a.stage == 0]
            if outbox:
                frozen = {row["idempotency_key"]: row.pop("payload") for row in outbox}
                written = connection.execute(insert_ignoring(
                    actions, connection.dialect, ["idempotency_key"]).returning(
                        actions.c.id, actions.c.idempotency_key), outbox).all()
                connection.execute(sa.insert(payloads), [
                    {"action_id": ident, "payload": frozen[key]} for ident, key in written])


def stored(db: sa.Engine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Both tables as the database hands them back without SQLAlchemy's types (SQLite: the
    stored text), ids replaced by the enrollment's (customer, occurrence)."""
    with db.connect() as connection:
        people = connection.exec_driver_sql(
            "SELECT * FROM enrollments ORDER BY customer_id, occurrence_key").mappings().all()
        outbox = connection.exec_driver_sql(
            "SELECT a.*, p.payload FROM actions a LEFT JOIN action_payloads p"
            " ON p.action_id = a.id ORDER BY idempotency_key").mappings().all()
    key = {row["id"]: (row["customer_id"], row["occurrence_key"]) for row in people}
    return ([{k: v for k, v in row.items() if k != "id"} for row in people],
            [{k: key[v] if k == "enrollment_id" else v for k, v in row.items() if k != "id"}
             for row in outbox])


def test_bulk_commit_writes_what_the_row_by_row_insert_wrote(db: sa.Engine, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setattr(reader, "BATCH", 4)
    monkeypatch.setattr(bulk, "SQLITE_ROWS", 3)
    shop(db)
    pb = playbook(tmp_path, "inactive: { days: 30 }", actions=ACTIONS, more="holdout: 0.25\n")
    config = load_settings(NO_PROJECT, env={
        "RETAIN_EMAIL_FROM": "shop@example.com", "RETAIN_QUIET_HOURS_EMAIL": "21:00-09:00",
        "RETAIN_CAPS_EMAIL": "1/7d"})
    links = unsubscribe_links(b"k" * 32, "https://retain.shop.example")
    with db.connect() as connection:
        plan = make_plan(connection, [pb], AS_OF, show=0, complete=False, settings=config,
                         unsubscribe=links).playbooks[0]
        done = commit_playbook(db, plan, AS_OF)
        again = commit_playbook(db, plan, AS_OF)
    ours = stored(db)
    statuses = {row["status"] for row in ours[1]}
    assert {st.DEFERRED, st.PLANNED, st.CAPPED, st.SKIPPED, st.SUPPRESSED, st.DEAD} <= statuses
    assert 0 < done.holdout < done.entered == 21 and sum(done.statuses.values()) == len(ours[1])
    assert (again.entered, sum(again.statuses.values())) == (0, 0)
    assert any("J\\u00fcrgen" in str(row["payload"]) or "Jürgen" in str(row["payload"])
               for row in ours[1])
    with db.begin() as connection:
        connection.execute(sa.delete(payloads))
        connection.execute(sa.delete(actions))
        connection.execute(sa.delete(enrollments))
    with db.connect() as connection:
        plan = make_plan(connection, [pb], AS_OF, show=0, complete=False, settings=config,
                         unsubscribe=links).playbooks[0]
        reference_commit(db, plan, AS_OF)
    assert stored(db) == ours


def test_insert_actions_of_dicts_skips_a_key_already_there(db: sa.Engine, tmp_path: Path
                                                           ) -> None:
    """The row-dict path (a resumed stage's actions) writes once per key, typed as before."""
    shop(db)
    pb = playbook(tmp_path, "inactive: { days: 30 }", actions=ACTIONS)
    with db.connect() as connection:
        plan = make_plan(connection, [pb], AS_OF, show=0, complete=False).playbooks[0]
        commit_playbook(db, plan, AS_OF)
    with db.connect() as connection:
        row = dict(connection.execute(select_actions(
            actions.c.connector == "task")).mappings().first() or {})
    before = stored(db)[1]
    copy = {k: v for k, v in row.items() if k not in ("id", "lease_until", "leased_by",
                                                      "sent_at")}
    fresh = {**copy, "idempotency_key": copy["idempotency_key"] + "-x",
             "payload": {"title": "Ünïcode", "due_at": "2024-05-03T08:30:00Z"}}
    with db.begin() as connection:
        insert_actions(connection, [copy, fresh])
    with db.connect() as connection:
        found = connection.execute(select_actions(
            actions.c.idempotency_key == fresh["idempotency_key"])).mappings().one()
    assert len(stored(db)[1]) == len(before) + 1
    assert (found["payload"], found["next_attempt_at"], found["created_at"]) == (
        fresh["payload"], row["next_attempt_at"], row["created_at"])
