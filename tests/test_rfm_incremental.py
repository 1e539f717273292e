"""RFM kept from the last ranking (engine/sync/rfm.py) equals the full definition, always.

After every sync the stored `rfm_score` / `rfm_segment` of every customer must equal what
`rfm_scores` (NTILE(5) over everyone, DESIGN section 1) gives at that moment: on random bases
(ties in R, F and M, ids that a locale would order differently, 0 to a couple of hundred
purchasers) and random sequences of syncs (new purchasers, more purchases, new customers,
customers with only other events, customers losing every purchase), on SQLite and PostgreSQL.
Most of those syncs take the incremental path; the tests check that they did.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.store.facts import customers, events, rfm_scores
from engine.store.tables import rankings
from engine.store.txn import writing
from engine.sync.facts import refresh_facts
from engine.sync.ingest import ingest_customers, ingest_events
from engine.sync.rfm import refresh_rfm, refresh_rfm_in_steps, refresh_rfm_live, rerank_moved

NOW = datetime(2025, 1, 1, tzinfo=UTC)
BASE = datetime(2024, 1, 1, tzinfo=UTC)
# Byte order and a locale's order disagree on these (case, digits, accents, punctuation).
IDS = ["a", "B", "a10", "A2", "b", "Z", "_x", "é", "e", "zz", "a-1", "a1", "Ä", "10", "9"]
DAYS = [0, 1, 1, 2, 5, 5, 9]  # few distinct times: ties on R
AMOUNTS = [0, 10, 10, 10.5, 20, 0.1, 0.2, 0.30000000000000004]  # ties on M, also after sums


def ids(count: int) -> list[str]:
    return [f"{IDS[n % len(IDS)]}{n // len(IDS) or ''}" for n in range(count)]


Event = tuple[int, str, int, float]  # customer index, type, day, amount
Step = tuple[str, list[Event]]  # "sync" (events, maybe for new customers) or "purge" (one index)

events_of = st.lists(st.tuples(st.integers(0, 250), st.sampled_from(
    ["purchase", "purchase", "purchase", "login", "feedback"]), st.sampled_from(DAYS),
    st.sampled_from(AMOUNTS)), max_size=30)
steps = st.lists(st.one_of(st.tuples(st.just("sync"), events_of),
                           st.tuples(st.just("purge"), st.lists(
                               st.tuples(st.integers(0, 250), st.just(""), st.just(0),
                                         st.just(0.0)), min_size=1, max_size=2))),
                 min_size=1, max_size=5)


def reset(engine: sa.Engine) -> None:
    """An empty store with no ranking, for the next example."""
    with writing(engine) as connection:
        connection.execute(sa.delete(events))
        connection.execute(sa.delete(customers))
        connection.execute(sa.update(rankings).values(ranked=0, generation=0, bounds=None))


def sync(engine: sa.Engine, base: int, batch: list[Event], serial: list[int]) -> None:
    """Customers for every index the events name (new ones are created), then the events."""
    people = ids(base + 251)
    wanted = sorted({people[i] for i, *_ in batch} | set(people[:base]))
    ingest_customers(engine, [(n, {"customer_id": cid}) for n, cid in enumerate(wanted)], "c",
                     now=NOW)
    rows = []
    for i, kind, days, amount in batch:
        serial[0] += 1
        props: dict[str, Any] = {"amount": amount} if kind == "purchase" else {}
        rows.append((serial[0], {"event_id": f"e{serial[0]}", "customer_id": people[i],
                                 "type": kind, "occurred_at": (BASE + timedelta(days=days))
                                 .isoformat(), "properties": props}))
    if rows:
        ingest_events(engine, rows, "e")


def purge(engine: sa.Engine, base: int, batch: list[Event]) -> None:
    """Customers lose every purchase (events deleted by hand), then facts and RFM refreshed."""
    people = ids(base + 251)
    gone = {people[i] for i, *_ in batch}
    with writing(engine) as connection:
        connection.execute(sa.delete(events).where(events.c.customer_id.in_(sorted(gone)),
                                                   events.c.type == "purchase"))
        refresh_facts(connection, gone)
        refresh_rfm(connection)


def stored(engine: sa.Engine) -> dict[str, tuple[str, str]]:
    c = customers.c
    with engine.connect() as connection:
        return {i: (s, g) for i, s, g in connection.execute(sa.select(
            c.customer_id, c.rfm_score, c.rfm_segment).where(
            sa.or_(c.rfm_score.is_not(None), c.rfm_segment.is_not(None))))}


def defined(engine: sa.Engine) -> dict[str, tuple[str, str]]:
    """The scores by the full definition, over the facts stored now."""
    scores = rfm_scores()
    with engine.connect() as connection:
        return {i: (s, g) for i, s, g in connection.execute(
            sa.select(scores.c.customer_id, scores.c.score, scores.c.segment))}


def generation(engine: sa.Engine) -> tuple[int, bool]:
    with engine.connect() as connection:
        row = connection.execute(sa.select(rankings.c.generation, rankings.c.bounds)).one()
    return row[0], row[1] is not None


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(base=st.integers(0, 200), first=events_of, more=steps)
def test_scores_after_every_sync_equal_the_full_definition(
        db: sa.Engine, base: int, first: list[Event], more: list[Step]) -> None:
    reset(db)
    serial = [0]
    purchases = [(i % max(base, 1), "purchase", DAYS[i % 7], AMOUNTS[i % 8])
                 for i in range(base * 3 // 2)]
    sync(db, base, purchases + first, serial)  # the first ranking: everyone
    assert stored(db) == defined(db)
    for kind, batch in more:
        before, was_bounded = generation(db)
        if kind == "sync":
            sync(db, base, batch, serial)
        else:
            purge(db, base, batch)
        assert stored(db) == defined(db)
        after, bounded = generation(db)
        assert after >= before and bounded >= was_bounded  # a ranking once kept stays kept


def test_a_few_moves_into_a_large_base_take_the_incremental_path(db: sa.Engine) -> None:
    """The incremental path re-scores the movers and the customers they pushed across a bound,
    not everyone, and gets the definition's scores."""
    reset(db)
    serial = [0]
    sync(db, 300, [(i, "purchase", DAYS[i % 7], AMOUNTS[i % 8]) for i in range(300)], serial)
    movers = ids(301)[5], ids(301)[300]
    with db.begin() as connection:
        connection.execute(sa.insert(customers).values(customer_id=movers[1]))
        connection.execute(sa.insert(events), [
            {"event_id": f"x{n}", "customer_id": who, "type": "purchase",
             "occurred_at": BASE + timedelta(days=9), "amount": 20.0, "properties": {}}
            for n, who in enumerate(movers)])
        refresh_facts(connection, set(movers))
    with writing(db) as connection:
        changed = rerank_moved(connection)
    assert changed is not None and 2 <= changed < 100
    assert stored(db) == defined(db)
    with writing(db) as connection:
        assert rerank_moved(connection) == 0  # nothing moved since


def test_too_many_movers_rank_everyone(db: sa.Engine) -> None:
    """Past the limit the full ranking runs, and repairs what the incremental one never reads."""
    reset(db)
    serial = [0]
    sync(db, 50, [(i, "purchase", DAYS[i % 7], AMOUNTS[i % 8]) for i in range(50)], serial)
    with db.begin() as connection:
        connection.execute(sa.update(customers).where(customers.c.customer_id == ids(1)[0])
                           .values(rfm_segment="planted"))
        connection.execute(sa.insert(events), [
            {"event_id": f"x{n}", "customer_id": ids(50)[n], "type": "purchase",
             "occurred_at": BASE, "amount": 1.0, "properties": {}} for n in range(10)])
        refresh_facts(connection, set(ids(50)[:10]))
    with writing(db) as connection:
        assert refresh_rfm(connection, limit=3) > 0
    assert stored(db) == defined(db)


@pytest.mark.parametrize("step", [1, 7, 1000])
def test_the_daemon_refresh_in_steps_then_incremental(db: sa.Engine, step: int) -> None:
    """The daemon's path: everyone in steps when there is no ranking (repairing scores written
    by hand), from the last ranking in one transaction afterwards; a ranking in steps leaves
    the bounds the next one starts from."""
    reset(db)
    serial = [0]
    sync(db, 60, [(i, "purchase", DAYS[i % 7], AMOUNTS[i % 8]) for i in range(90)], serial)
    with db.begin() as connection:
        connection.execute(sa.update(rankings).values(bounds=None))
        connection.execute(sa.update(customers).values(rfm_score="111", rfm_segment="lost"))
    assert refresh_rfm_live(db) == len(defined(db))
    assert stored(db) == defined(db) and generation(db)[1]
    with db.begin() as connection:
        connection.execute(sa.insert(events), [
            {"event_id": "late", "customer_id": ids(70)[65], "type": "purchase",
             "occurred_at": BASE, "amount": 3.0, "properties": {}}])
        refresh_facts(connection, {ids(70)[65]})
    generation_before = generation(db)[0]
    assert refresh_rfm_live(db) >= 1
    assert generation(db) == (generation_before + 1, True)  # one short transaction
    assert stored(db) == defined(db)
    assert refresh_rfm_in_steps(db, step=step) == 0
    assert stored(db) == defined(db) and generation(db)[1]
