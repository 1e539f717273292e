"""`rfm_score` / `rfm_segment` as of a past instant are ranked from the events up to it.

DESIGN 5: `--as-of` before the latest event derives every fact from the events up to as-of; RFM
ranks customers against each other, so as of a past instant it is DESIGN 1's NTILE over the
customers with a purchase by then (engine/store/facts.py `rfm_scores(as_of=...)`). Five customers,
so NTILE(5) gives each its own score: at AS_OF `a` bought last and most (champion, "555"); after
AS_OF the other four buy often, so the kept (today's) segment of `a` is hibernating. Evaluation,
the plan's customer records and explain must all say champion as of AS_OF.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_evaluate_triggers import (
    AS_OF,
    add_customers,
    add_events,
    ago,
    customer,
    entering,
    plan_of,
    playbook,
)

from engine.plan.planner import in_holdout
from engine.query.explain import explain
from engine.store.facts import customers, rfm_scores

LATER = AS_OF + timedelta(days=30)
TITLE = '  - task: { title: "{{ customer.rfm_segment }} {{ customer.rfm_score }}" }\n'


@pytest.fixture
def shifting(db: sa.Engine) -> sa.Engine:
    """a: 5 purchases up to a day before AS_OF; b-e: 1-4 purchases earlier, then 10 each after."""
    ids = ["a", "b", "c", "d", "e"]
    add_customers(db, *(customer(cid) for cid in ids))
    rows = [(f"a{n}", "a", "purchase", ago(days=1 + n), {"amount": 50}) for n in range(5)]
    for rank, cid in enumerate(ids[1:], 1):
        rows += [(f"{cid}{n}", cid, "purchase", ago(days=10 * rank + n), {"amount": 10})
                 for n in range(5 - rank)]
        rows += [(f"{cid}-later{n}", cid, "purchase", AS_OF + timedelta(days=1 + n + rank),
                  {"amount": 100}) for n in range(10)]
    add_events(db, *rows)
    return db


def kept(db: sa.Engine, column: str) -> dict[str, str]:
    with db.connect() as connection:
        return dict(connection.execute(sa.select(customers.c.customer_id,
                                                 customers.c[column])).all())


def test_today_a_is_hibernating(shifting: sa.Engine) -> None:
    assert kept(shifting, "rfm_segment")["a"] == "hibernating"
    assert kept(shifting, "rfm_score")["a"] == "111"


def test_rfm_segment_selects_by_the_past(shifting: sa.Engine, tmp_path: Path) -> None:
    pb = playbook(tmp_path, "segment: {}", when=["rfm_segment: { eq: champion }"])
    assert set(entering(shifting, pb)) == {"a"}  # as of AS_OF, not today's hibernating
    assert "a" not in entering(shifting, pb, LATER)
    scored = playbook(tmp_path, "segment: {}", when=["rfm_score: { eq: '555' }"], pid="score")
    assert set(entering(shifting, scored)) == {"a"}


def test_plan_renders_the_past_rfm(shifting: sa.Engine, tmp_path: Path) -> None:
    pb = playbook(tmp_path, "segment: {}", when=["customer_id: { eq: a }"], actions=TITLE)
    (only,) = plan_of(shifting, [pb]).playbooks
    (enrollment,) = only.shown
    assert enrollment.actions[0].fields["title"] == "champion 555"


def test_explain_shows_the_past_rfm(shifting: sa.Engine, tmp_path: Path) -> None:
    pb = playbook(tmp_path, "segment: {}", when=["rfm_segment: { eq: champion }"])
    with shifting.connect() as connection:
        result = explain(connection, pb, "a", AS_OF, holdout=in_holdout)
    clause = next(c for c in result.clauses if c.path == "when[0].rfm_segment.eq")
    assert (clause.actual, clause.result) == ("champion", True)
    assert result.entering


def test_customers_without_a_purchase_by_then_have_no_rfm(shifting: sa.Engine,
                                                         tmp_path: Path) -> None:
    early = ago(days=5 * 10 + 10)  # before anyone's first purchase
    pb = playbook(tmp_path, "segment: {}", when=["rfm_segment: { is_null: true }"])
    assert set(entering(shifting, pb, early)) == {"a", "b", "c", "d", "e"}


def test_as_of_after_every_event_gives_the_kept_scores(shifting: sa.Engine) -> None:
    """One definition: ranked as of the future, the scores are exactly those sync keeps."""
    with shifting.connect() as connection:
        past = rfm_scores(as_of=LATER + timedelta(days=400))
        derived = dict(connection.execute(sa.select(past.c.customer_id, past.c.score)).all())
    assert derived == kept(shifting, "rfm_score")
