"""Keeping the RFM scores up to date: from where the last ranking left them, or everyone again.

RFM is defined once, in engine/store/facts.py (`rfm_scores`): NTILE(5) over the customers with a
purchase, ordered by value then customer_id, per dimension. NTILE gives a row its bucket from its
position alone (N = 5q + r rows: the first r buckets hold q + 1, the others q), so a ranking is
fully described by N and, per dimension, the first row of buckets 2 to 5. Every ranking keeps
that (`rfm_ranking`), and each customer keeps the three values it was ranked with
(`rfm_last_purchase_at`, `rfm_purchase_count`, `rfm_revenue`). A customer whose facts differ
from those has *moved*; a partial index finds the movers without scanning anyone else, whatever
wrote their facts (a sync, the daemon's API). The next ranking then:

1. reads the movers: their old key (as ranked) and their new one (the facts now);
2. per dimension and bucket, counts the rows of the new ordering below the old bound (its old
   position, minus the movers that were below it, plus those now below it) and walks the index
   of ranked values from there to the new bound's position: a distance of at most about twice
   the number of movers;
3. re-scores the movers, and the customers whose unchanged key lies between an old and a new
   bound (index range scans), and writes the new bounds, in one transaction.

The result is the full definition's, ties included (tests/test_rfm_incremental.py checks it
against `rfm_scores` on both databases). Everyone is ranked again (`rank_everyone`) when there
is no ranking to start from (a new or just migrated database, a daemon ranking in steps under
way), when a bound's customer is gone, or when the movers are many (more than MOVES_SHARE of the
ranked customers and MIN_MOVES): there one pass over everybody is cheaper.

Concurrency: only rankers write the ranked values and the bounds, and rankers exclude each other
(SQLite: one writer at a time; PostgreSQL: the `rfm_ranking` row is locked FOR UPDATE). Facts may
change while a ranking runs: a mover is re-ranked with the values it was read with, so one that
moves again meanwhile still differs from its ranked values and is taken by the next ranking.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from engine.store.facts import has_purchased, rfm_scores
from engine.store.tables import RFM_KEYS, RFM_MOVED, RFM_RANKED_BY, customers, revenue
from engine.store.txn import writing
from engine.sync.rfm_moves import (
    BUCKETS,
    DIMENSIONS,
    ID_ORDER,
    MOVER_WRITE,
    NEW_M,
    lock_ranking,
    raw,
    rerank_moved,
    save_ranking,
    start,
)

__all__ = ["rank_everyone", "refresh_rfm", "refresh_rfm_in_steps", "refresh_rfm_live",
           "rerank_moved"]

c = customers.c


# --- everyone ranked again ----------------------------------------------------------------------


def _scored() -> tuple[sa.Subquery, sa.ColumnElement[bool]]:
    """The full ranking beside what is stored now, and which of its rows it changes: those
    whose scores differ or who moved since their values were ranked."""
    s = rfm_scores(c.rfm_score.label("old_score"), c.rfm_segment.label("old_segment"),
                   RFM_MOVED.label("moved"))
    return s, sa.or_(s.c.old_score.is_distinct_from(s.c.score),
                     s.c.old_segment.is_distinct_from(s.c.segment), s.c.moved)


_UNRANKED = sa.and_(~has_purchased(), sa.or_(c.rfm_score.is_not(None),
                                             c.rfm_segment.is_not(None), RFM_MOVED))
"""Customers without a purchase whose scores or ranked values are not yet cleared."""


def _changed() -> tuple[sa.Select[Any], sa.Select[Any]]:
    """(customer_id, score, segment, R, F, M raw) of every customer the full ranking changes:
    those with a purchase, then those without."""
    s, changed = _scored()
    return (sa.select(s.c.customer_id, s.c.score, s.c.segment, raw(s.c.last_purchase_at),
                      s.c.purchase_count, raw(revenue(s.c.total_spent))).where(changed),
            sa.select(c.customer_id, sa.null(), sa.null(), raw(c.last_purchase_at),
                      c.purchase_count, raw(NEW_M)).where(_UNRANKED))


@functools.cache
def _ranking_everyone(dialect: str) -> tuple[sa.Update, sa.Update]:
    """`rank_everyone`'s two updates (built once per dialect: building them cost more than
    running them on a small store): the customers with a purchase whose scores or ranked
    values change, then those without a purchase still carrying any."""
    s, which = _scored()
    changed = sa.select(s).where(which)
    if dialect == "sqlite":
        # With this ORDER BY SQLite updates in customer_id order: its lookups walk the
        # customer index (and, where ids were inserted in order, the table) page by page
        # instead of in the last NTILE's order (1M customers of the few shape: 5.3 s -> 4.7 s
        # of CPU for this UPDATE). PostgreSQL joins by its own plan; it would only sort.
        changed = changed.order_by(s.c.customer_id)
    changed = changed.subquery("rfm_changed")
    return (sa.update(customers).where(c.customer_id == changed.c.customer_id)
            .values(rfm_score=changed.c.score, rfm_segment=changed.c.segment,
                    rfm_last_purchase_at=changed.c.last_purchase_at,
                    rfm_purchase_count=changed.c.purchase_count,
                    rfm_revenue=revenue(changed.c.total_spent)),
            sa.update(customers).where(_UNRANKED)
            .values(rfm_score=None, rfm_segment=None, rfm_last_purchase_at=c.last_purchase_at,
                    rfm_purchase_count=c.purchase_count, rfm_revenue=NEW_M))


def rank_everyone(connection: sa.Connection,
                  before_bounds: Callable[[], None] | None = None) -> int:
    """Rank every customer again (the definition's NTILE over all), in the caller's
    transaction; write the bounds the next ranking starts from. Returns how many changed.

    `before_bounds` runs between writing the scores and finding the bounds: a first load
    rebuilds there the indexes it dropped (the bounds are walks of RFM's indexes)."""
    ranking = lock_ranking(connection)
    total = sum(connection.execute(statement).rowcount
                for statement in _ranking_everyone(connection.dialect.name))
    if before_bounds is not None:
        before_bounds()
    _save_bounds(connection, ranking.generation + 1)
    return total


def _save_bounds(connection: sa.Connection, generation: int) -> None:
    """Find the bounds of the ranking stored now (one index walk to each) and keep them.

    PostgreSQL first gets statistics of the ranked values just written (a sample: well under
    a second at a million customers): without them it takes every ranked customer for NULL and
    walks the wrong index, sorting tens of thousands of rows for each bound."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("ANALYZE customers")
    ranked = connection.execute(
        sa.select(sa.func.count()).select_from(customers).where(RFM_RANKED_BY["r"])).scalar_one()
    walks = [(dimension, bucket) for dimension in DIMENSIONS for bucket in BUCKETS
             if ranked >= bucket]
    picks = [sa.select(c.customer_id).where(RFM_RANKED_BY[dimension])
             .order_by(RFM_KEYS[dimension], ID_ORDER).limit(1).offset(start(ranked, bucket))
             .scalar_subquery() for dimension, bucket in walks]
    found = {}  # every walk in one statement: a round trip each cost more on a small store
    if picks:
        found = dict(zip(walks, connection.execute(sa.select(*picks)).one(), strict=True))
    bounds = {dimension: [found.get((dimension, bucket)) for bucket in BUCKETS]
              for dimension in DIMENSIONS}
    save_ranking(connection, ranked, generation, bounds)


def refresh_rfm(connection: sa.Connection, limit: int | None = None) -> int:
    """Bring `rfm_score` and `rfm_segment` up to date, in the caller's transaction: from the
    last ranking when it can (`rerank_moved`), else everyone again (`rank_everyone`). Run it
    after `refresh_facts`: it ranks the facts that refresh keeps. Returns how many changed."""
    changed = rerank_moved(connection, limit)
    return rank_everyone(connection) if changed is None else changed


def refresh_rfm_in_steps(engine: sa.Engine, step: int = 2_000) -> int:
    """Everyone ranked again by a process that must keep writing meanwhile (the daemon).

    The changed scores are read in one snapshot (a reader blocks no writer, in SQLite's WAL as
    in PostgreSQL) and written `step` customers per transaction, so no write waits for the
    whole ranking. The bounds are withdrawn first (so that no other ranking starts from them
    meanwhile: one that runs ranks everyone, and this one then stops) and written last, from
    the values now ranked. A customer whose facts change after the snapshot keeps the
    snapshot's values as ranked, so the next ranking takes them as a mover. Returns how many
    customers changed."""
    with writing(engine) as connection:
        ranking = lock_ranking(connection)
        generation = ranking.generation + 1
        save_ranking(connection, ranking.ranked, generation, None)
    total = 0
    with engine.connect() as reading:
        if reading.dialect.name == "postgresql":  # both queries in one snapshot
            reading = reading.execution_options(isolation_level="REPEATABLE READ")
        for query in _changed():
            result = reading.execution_options(yield_per=step).execute(query)
            for part in result.partitions():
                with writing(engine) as connection:
                    if lock_ranking(connection).generation != generation:
                        return total  # someone ranked everyone since: theirs is newer
                    connection.execute(MOVER_WRITE, [
                        {"id": i, "score": score, "segment": segment, "r": r, "f": f, "m": m}
                        for i, score, segment, r, f, m in part])
                total += len(part)
    with writing(engine) as connection:
        if lock_ranking(connection).generation == generation:
            _save_bounds(connection, generation)
    return total


def refresh_rfm_live(engine: sa.Engine) -> int:
    """The daemon's refresh: from the last ranking in one short transaction when it can, else
    everyone in steps (`refresh_rfm_in_steps`). Returns how many customers changed."""
    with writing(engine) as connection:
        changed = rerank_moved(connection)
    return refresh_rfm_in_steps(engine) if changed is None else changed
