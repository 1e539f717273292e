"""The facts index (migration 0006) and the moment read in one statement (issue 14 part 1).

SQLite evaluates a playbook that reads only the everyday facts from `ix_customers_facts`, a
third of the customers row, instead of the table; these tests hold the plan to that, so a
statement that grows a column outside the index (or an index that loses one) fails here rather
than in a benchmark. Real SQLite files and PostgreSQL schemas.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.format.playbook import Playbook
from engine.format.validation import load_valid_playbooks
from engine.query.evaluate import compose, latest_event_time, prepare
from engine.store.open import make_engine, migrate, open_store
from engine.store.tables import FACTS_INDEXED, Customer, Event

REPO = Path(__file__).resolve().parent.parent
AS_OF = datetime(2025, 1, 1, tzinfo=UTC)


def _playbook(tmp_path: Path, when: str, trigger: str = "inactive: { days: 30 }",
              extra: str = "") -> Playbook:
    source = (f"id: p\nname: P\ntrigger:\n  {trigger}\n{extra}when:\n{when}\n"
              "actions:\n  - task: { title: t, assignee: a }\n")
    path = tmp_path / "p.yaml"
    path.write_text(source)
    return load_valid_playbooks([path])[0]


def _plan(connection: sa.Connection, playbook: Playbook, backfill: bool = True) -> str:
    tc = prepare(connection, AS_OF, [playbook]).trigger_context(playbook.id)
    query = compose(playbook, tc, playbook.trigger.sql(tc, backfill))
    counted = sa.select(sa.func.count()).select_from(query.subquery())
    sql = str(counted.compile(connection, compile_kwargs={"literal_binds": True}))
    return "; ".join(row[3] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))


def test_the_win_back_of_issue_14_reads_the_index_not_the_table(sqlite_url: str) -> None:
    """bench/playbooks/winback-four.yaml (inactive, spend, purchases, segment) is a scan of
    the covering index: the customers table is never read."""
    engine = open_store(sqlite_url)
    playbook = load_valid_playbooks([REPO / "bench" / "playbooks" / "winback-four.yaml"])[0]
    with engine.connect() as connection:
        plan = _plan(connection, playbook)
    assert "SCAN customers USING COVERING INDEX ix_customers_facts" in plan


def test_a_column_outside_the_index_reads_the_table(sqlite_url: str, tmp_path: Path) -> None:
    """The index is no stand-in for the table: `email` is not in it, so the table is read
    (and the answer is the table's), which is why the test above can fail."""
    engine = open_store(sqlite_url)
    playbook = _playbook(tmp_path, "  - email: { is_null: false }")
    with engine.connect() as connection:
        plan = _plan(connection, playbook)
    assert "COVERING INDEX" not in plan and "SCAN customers" in plan


def test_rfm_segment_and_spend_are_covered_too(sqlite_url: str, tmp_path: Path) -> None:
    """vip-care's kind of rule (segment trigger, RFM segment or spend and purchases)."""
    engine = open_store(sqlite_url)
    playbook = _playbook(
        tmp_path, "  - any:\n      - rfm_segment: { in: [champion] }\n"
                  "      - total_spent: { gte: 5000 }\n  - purchase_count: { gte: 2 }",
        trigger="segment: {}")
    with engine.connect() as connection:
        plan = _plan(connection, playbook)
    assert "COVERING INDEX ix_customers_facts" in plan


def test_inactive_without_backfill_seeks_the_index(sqlite_url: str, tmp_path: Path) -> None:
    """The lookup the single-column last_active_at index served: a range, not a scan."""
    engine = open_store(sqlite_url)
    playbook = _playbook(tmp_path, "  - purchase_count: { gte: 1 }")
    with engine.connect() as connection:
        plan = _plan(connection, playbook, backfill=False)
    assert "SEARCH customers USING COVERING INDEX ix_customers_facts (last_active_at>? AND " \
           "last_active_at<?)" in plan


def test_0006_replaces_the_last_active_at_index(db_url: str) -> None:
    """An existing database is carried over: at 0004 it has the single-column index and its
    customers; upgraded, the facts index instead, the rows unchanged."""
    engine = make_engine(db_url)
    migrate(engine, to="0004")
    at_0004 = sa.Table("customers", sa.MetaData(), autoload_with=engine)  # no later columns
    row = Customer(customer_id="c1", tags=[], attributes={}, total_spent=12.5).model_dump()
    with engine.begin() as connection:
        connection.execute(at_0004.insert(), [{k: v for k, v in row.items() if k in at_0004.c}])

    def indexes() -> set[str]:
        return {ix["name"] for ix in sa.inspect(engine).get_indexes("customers")}

    assert "ix_customers_last_active_at" in indexes()
    migrate(engine, to="0006")
    assert "ix_customers_facts" in indexes() and "ix_customers_last_active_at" not in indexes()
    found = {ix["name"]: ix["column_names"] for ix in sa.inspect(engine).get_indexes("customers")}
    assert tuple(found["ix_customers_facts"]) == FACTS_INDEXED
    with engine.connect() as connection:
        assert connection.execute(sa.select(Customer.total_spent)).scalar_one() == 12.5  # type: ignore[call-overload]
    engine.dispose()


@pytest.mark.parametrize("types", [[], ["email_sent"], ["login", "purchase", "email_sent"]])
def test_the_latest_event_is_the_latest_customer_event(db: sa.Engine, types: list[str]) -> None:
    """One statement, the same answer as `max(occurred_at)` over the events that are not the
    engine's own (None when there are none): the engine's event is the latest of all here."""
    rows = [{"event_id": f"e{n}", "customer_id": "c1", "type": kind,
             "occurred_at": AS_OF - timedelta(days=len(types) - n), "properties": {}}
            for n, kind in enumerate(types)]
    with db.begin() as connection:
        connection.execute(sa.insert(Customer), [{"customer_id": "c1", "tags": [],
                                                  "attributes": {}}])
        if rows:
            connection.execute(sa.insert(Event), rows)
    wanted = max((r["occurred_at"] for r in rows if r["type"] != "email_sent"), default=None)
    with db.connect() as connection:
        assert latest_event_time(connection) == wanted
