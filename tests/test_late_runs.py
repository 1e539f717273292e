"""Caps when something goes out later than it was due: a step resumed by a late run, and outbox
rows that are overdue because no dispatch ran. Both are sent at the next dispatch, so both must
be judged (and counted) at that moment, not at the due time that has passed (RELIABILITY 22).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from test_caps_quiet import AS_OF, MAIL, add_rows, booking, person, planner_at, rules_of, utc
from test_caps_quiet import settings as env_settings
from test_evaluate_triggers import add_customers, customer
from test_evaluate_triggers import playbook as db_playbook
from test_planner import playbook

from engine.plan.build import make_plan
from engine.store.status import CAPPED, PLANNED

DAY = timedelta(days=1)


def test_a_step_resumed_late_is_capped_by_what_was_sent_just_before_the_run(
        tmp_path: Path) -> None:
    """Entered on the 1st, the second email was due on the 2nd; the run that resumes it comes on
    the 20th, a day after another playbook's email. It goes on the 20th, so cap 1/7d holds it
    (judged on the 2nd it would fit, and two emails would go within a day)."""
    pb = playbook(tmp_path, actions=MAIL + "  - wait: 1d\n" + MAIL)
    entered, run = utc("2026-01-01T10:00:00"), utc("2026-01-20T10:00:00")
    sent = {"email": [booking(run - DAY, "other")]}
    pl = planner_at(pb, entered, rules_of(caps={"email": "1/7d"}), commit_stage=1,
                    sends_at=run)
    (second,) = [a for a in pl.actions("o", person("c1", "a@x.example"), None, {}, sent)
                 if a.stage == 1]
    assert second.status == CAPPED
    assert second.reason == "cap email 1/7d reached: sent or planned by other"
    on_time = planner_at(pb, entered, rules_of(caps={"email": "1/7d"}), commit_stage=1,
                         sends_at=entered + DAY)
    (fits,) = [a for a in on_time.actions("o", person("c1", "a@x.example"), None, {}, sent)
               if a.stage == 1]
    assert (fits.status, fits.run_at) == (PLANNED, entered + DAY)


def test_an_overdue_unsent_row_fills_the_cap_now(db: sa.Engine, tmp_path: Path) -> None:
    """A planned email due ten days ago that no dispatch has sent yet goes at the next dispatch,
    with whatever this plan adds: it fills a 1/7d cap now (a row sent ten days ago does not)."""
    add_customers(db, customer("late", email="late@x.example", name="Ann"),
                  customer("old", email="old@x.example", name="Bob"))
    add_rows(db, ("promo", "late", "email", "planned", AS_OF - 10 * DAY, None),
             ("promo", "old", "email", "sent", AS_OF - 10 * DAY, AS_OF - 10 * DAY))
    pb = db_playbook(tmp_path, "segment: {}", actions=MAIL, pid="winback")
    with db.connect() as connection:
        plan = make_plan(connection, [pb], AS_OF, settings=env_settings(caps={"email": "1/7d"}))
        got = {e.customer_id: e.actions[0] for e in plan.playbooks[0].enrollments()}
    assert (got["late"].status, got["old"].status) == (CAPPED, PLANNED)
    assert got["late"].reason == "cap email 1/7d reached: sent or planned by promo"


def test_the_run_table_counts_rows_the_dispatch_deferred() -> None:
    """A retry or an overdue row that the run's dispatch defers (quiet hours at send time) is
    shown as deferred, not lost between the columns."""
    from collections import Counter

    from cli.run import counts
    from engine.outbox.run import PlaybookRun

    line = PlaybookRun("winback", committed=Counter({"deferred": 1}),
                       delivered=Counter({"deferred": 2, "sent": 1}))
    assert (counts(line)["deferred"], counts(line)["sent"]) == (3, 1)
