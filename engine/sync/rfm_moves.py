"""RFM from the last ranking: the movers, the bounds' new places, the re-scored customers.

How and why this is exact: engine/sync/rfm.py's docstring. This module walks one dimension's
index of ranked values, reads the movers and writes what changes (`rerank_moved`).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from engine.store.facts import RFM_SEGMENTS, customer_id_order
from engine.store.tables import (
    RFM_KEYS,
    RFM_MOVED,
    RFM_RANKED_BY,
    customers,
    rankings,
    revenue,
)

MIN_MOVES = 5_000
MOVES_SHARE = 20  # more movers than 1/20 of the ranked customers (and MIN_MOVES): rank everyone
DIMENSIONS = ("r", "f", "m")
BUCKETS = (2, 3, 4, 5)  # the buckets whose first row is a bound (bucket 1 starts at 0)
CHUNK = 500  # ids per IN (...) when reading the re-scored customers

Key = tuple[Any, str]
"""A position in one dimension's order: (the value as the database orders it, customer_id)."""
Bounds = dict[str, list[Key | None]]
"""Per dimension, the first row of buckets 2..5 (None: that bucket is empty, N < bucket)."""

RAW = sa.types.NullType()
"""Values pass as the driver gives them (SQLite's time text, PostgreSQL's datetime), so what is
compared and written back is exactly what is stored."""
c = customers.c
ID_ORDER = customer_id_order()
NEW_M = revenue(c.total_spent)
"""M's key over the facts now, as `rfm_revenue` keeps it once ranked."""


def raw(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    return sa.type_coerce(column, RAW)


def start(rows: int, bucket: int) -> int:
    """The position (from 0) of the first row of `bucket` (1-5) when NTILE(5) splits `rows`."""
    size, larger = divmod(rows, 5)
    return (bucket - 1) * size + min(bucket - 1, larger)


def segment_of(r: int, f: int) -> str:
    """The segment RFM_SEGMENTS gives these R and F scores."""
    for (r_low, r_high), (f_low, f_high), name in RFM_SEGMENTS:
        if r_low <= r <= r_high and f_low <= f <= f_high:
            return name
    raise AssertionError(f"no segment for R={r} F={f}")  # pragma: no cover (table is total)


def bucket_of(key: Key, bounds: Sequence[Key | None]) -> int:
    """The score (1-5) of a row at `key`, given the bounds of buckets 2..5."""
    return 1 + sum(1 for bound in bounds if bound is not None and key >= bound)


# --- the ranking row: lock, read, write ---------------------------------------------------------


@dataclass
class Ranking:
    """The `rfm_ranking` row."""

    ranked: int
    generation: int
    bounds: dict[str, list[str | None]] | None


def lock_ranking(connection: sa.Connection) -> Ranking:
    """The ranking row, locked until the transaction ends (PostgreSQL; SQLite has one writer)."""
    query = (sa.select(rankings.c.ranked, rankings.c.generation, rankings.c.bounds)
             .where(rankings.c.id == 1).with_for_update())
    row = connection.execute(query).first()
    if row is None:  # a database whose row was removed by hand: start again
        connection.execute(sa.insert(rankings).values(id=1, ranked=0, generation=0, bounds=None))
        row = connection.execute(query).one()
    return Ranking(row.ranked, row.generation, row.bounds)


def save_ranking(connection: sa.Connection, ranked: int, generation: int,
          bounds: dict[str, list[str | None]] | None) -> None:
    connection.execute(sa.update(rankings).where(rankings.c.id == 1).values(
        ranked=ranked, generation=generation, bounds=bounds))


# --- walking one dimension's index of ranked values ------------------------------------------


def _ranked(dimension: str) -> sa.Select[Any]:
    key = RFM_KEYS[dimension]
    return sa.select(raw(key), c.customer_id).where(RFM_RANKED_BY[dimension])


def walk(connection: sa.Connection, dimension: str, anchor: Key | None, forward: bool,
         limit: int) -> list[Key]:
    """Up to `limit` ranked rows from `anchor`: forward from it (itself included), or backward
    from just before it (anchor None: from the end). Two index seeks (the anchor's key, then
    beyond), as SQLite seeks an index on an expression by its key but not by a row value."""
    if limit <= 0:
        return []
    key = RFM_KEYS[dimension]
    if anchor is None:
        order = (key.desc(), ID_ORDER.desc()) if not forward else (key, ID_ORDER)
        return [tuple(row) for row in connection.execute(  # type: ignore[misc]
            _ranked(dimension).order_by(*order).limit(limit))]
    value, customer_id = anchor
    raw_key = raw(key)
    if forward:
        same = _ranked(dimension).where(raw_key == value, customer_id <= ID_ORDER).order_by(ID_ORDER)
        beyond = _ranked(dimension).where(raw_key > value).order_by(key, ID_ORDER)
    else:
        same = _ranked(dimension).where(raw_key == value, customer_id > ID_ORDER).order_by(ID_ORDER.desc())
        beyond = _ranked(dimension).where(raw_key < value).order_by(key.desc(), ID_ORDER.desc())
    rows = [tuple(row) for row in connection.execute(same.limit(limit))]
    if len(rows) < limit:
        rows += [tuple(row) for row in connection.execute(beyond.limit(limit - len(rows)))]
    return rows  # type: ignore[return-value]


def between(connection: sa.Connection, dimension: str, low: Key, high: Key | None) -> list[str]:
    """The ranked customers at or after `low` and before `high` (None: to the end)."""
    key = raw(RFM_KEYS[dimension])
    ranked = sa.select(c.customer_id).where(RFM_RANKED_BY[dimension])
    if high is not None and high[0] == low[0]:
        parts = [ranked.where(key == low[0], low[1] <= ID_ORDER, high[1] > ID_ORDER)]
    else:
        parts = [ranked.where(key == low[0], low[1] <= ID_ORDER)]
        if high is None:
            parts.append(ranked.where(key > low[0]))
        else:
            parts += [ranked.where(key > low[0], key < high[0]),
                      ranked.where(key == high[0], high[1] > ID_ORDER)]
    return [row[0] for part in parts for row in connection.execute(part)]


# --- the incremental ranking ------------------------------------------------------------------


@dataclass(frozen=True)
class Mover:
    """A customer whose facts differ from the values they were ranked with."""

    customer_id: str
    old: dict[str, Key] | None  # keys per dimension as ranked; None: not ranked then
    new: dict[str, Key] | None  # keys per dimension now; None: no purchase now
    values: dict[str, Any]  # the keys now, raw, to store as the ranked values


def read_movers(connection: sa.Connection, limit: int) -> list[Mover]:
    """Up to `limit` customers who moved since the last ranking (through the partial index)."""
    query = sa.select(
        c.customer_id, c.purchase_count, raw(c.last_purchase_at), raw(NEW_M),
        c.rfm_purchase_count, raw(c.rfm_last_purchase_at), raw(c.rfm_revenue),
    ).where(RFM_MOVED).order_by(c.customer_id).limit(limit)  # the index's order: PostgreSQL
    # guesses half the table moved, and without the order it scanned the table for them
    movers = []
    for customer_id, count, last, m, old_count, old_last, old_m in connection.execute(query):
        old = ({"r": (old_last, customer_id), "f": (old_count, customer_id),
                "m": (old_m, customer_id)} if old_count > 0 else None)
        new = ({"r": (last, customer_id), "f": (count, customer_id), "m": (m, customer_id)}
               if count > 0 else None)
        movers.append(Mover(customer_id, old, new, {"r": last, "f": count, "m": m}))
    return movers


def _bound_keys(connection: sa.Connection,
                bounds: dict[str, list[str | None]]) -> Bounds | None:
    """The keys of the bounds' customers as ranked; None when one is missing or not ranked."""
    ids = sorted({i for ids in bounds.values() for i in ids if i is not None})
    query = sa.select(c.customer_id, raw(c.rfm_last_purchase_at), c.rfm_purchase_count,
                      raw(RFM_KEYS["m"])).where(c.customer_id.in_(ids))
    found = {row[0]: row for row in connection.execute(query)} if ids else {}
    keys: Bounds = {}
    for dimension in DIMENSIONS:
        column = DIMENSIONS.index(dimension) + 1
        keys[dimension] = []
        for customer_id in bounds.get(dimension, [None] * 4):
            if customer_id is None:
                keys[dimension].append(None)
                continue
            row = found.get(customer_id)
            if row is None or row[2] <= 0:
                return None
            keys[dimension].append((row[column], customer_id))
    return keys


def new_bounds(connection: sa.Connection, dimension: str, old: Sequence[Key | None],
               ranked: int, now_ranked: int, movers: Sequence[Mover]) -> list[Key | None]:
    """The first rows of buckets 2..5 in the new order of one dimension."""
    gone = sorted(m.old[dimension] for m in movers if m.old is not None)
    came = sorted(m.new[dimension] for m in movers if m.new is not None)
    moved = {m.customer_id for m in movers}
    result: list[Key | None] = []
    for bucket, anchor in zip(BUCKETS, old, strict=True):
        if now_ranked < bucket:
            result.append(None)  # fewer rows than buckets: this one is empty
            continue
        wanted = start(now_ranked, bucket)
        if anchor is None:  # the old bucket was empty: start from the end
            below = now_ranked
        else:
            below = (start(ranked, bucket) - bisect.bisect_left(gone, anchor)
                     + bisect.bisect_left(came, anchor))
        if wanted >= below:
            steps = wanted - below
            stayed = [k for k in walk(connection, dimension, anchor, True,
                                      steps + 1 + len(moved)) if k[1] not in moved]
            arrived = came[bisect.bisect_left(came, anchor):] if anchor is not None else []
            order = heapq.merge(stayed, arrived)
        else:
            steps = below - wanted - 1
            stayed = [k for k in walk(connection, dimension, anchor, False,
                                      steps + 1 + len(moved)) if k[1] not in moved]
            cut = bisect.bisect_left(came, anchor) if anchor is not None else len(came)
            order = heapq.merge(stayed, reversed(came[:cut]), reverse=True)
        result.append(next(itertools.islice(order, steps, None)))
    return result


def rerank_moved(connection: sa.Connection, limit: int | None = None) -> int | None:
    """Bring the scores up to date from the last ranking, in the caller's transaction; how many
    customers were re-scored, or None when everyone must be ranked (see the module docstring).
    `limit`: the most movers taken this way (default: MOVES_SHARE of the ranked, MIN_MOVES)."""
    ranking = lock_ranking(connection)
    if ranking.bounds is None:
        return None
    limit = max(MIN_MOVES, ranking.ranked // MOVES_SHARE) if limit is None else limit
    movers = read_movers(connection, limit + 1)
    if len(movers) > limit:
        return None
    if not movers:
        return 0
    old = _bound_keys(connection, ranking.bounds)
    if old is None:
        return None
    now_ranked = (ranking.ranked - sum(m.old is not None for m in movers)
                  + sum(m.new is not None for m in movers))
    new = {d: new_bounds(connection, d, old[d], ranking.ranked, now_ranked, movers)
           for d in DIMENSIONS}
    crossed = _crossed(connection, old, new) - {m.customer_id for m in movers}
    _write_movers(connection, movers, new)
    _write_crossed(connection, crossed, new)
    save_ranking(connection, now_ranked, ranking.generation + 1,
          {d: [None if k is None else k[1] for k in new[d]] for d in DIMENSIONS})
    return len(movers) + len(crossed)


def _crossed(connection: sa.Connection, old: Bounds, new: Bounds) -> set[str]:
    """The ranked customers whose key lies between a bound's old and new place."""
    found: set[str] = set()
    for dimension in DIMENSIONS:
        for before, after in zip(old[dimension], new[dimension], strict=True):
            if before == after:
                continue
            if before is None or (after is not None and after < before):
                before, after = after, before
            assert before is not None
            found.update(between(connection, dimension, before, after))
    return found


def _score(keys: dict[str, Key], bounds: Bounds) -> tuple[str, str]:
    r, f, m = (bucket_of(keys[d], bounds[d]) for d in DIMENSIONS)
    return f"{r}{f}{m}", segment_of(r, f)


MOVER_WRITE = sa.text(
    "UPDATE customers SET rfm_score = :score, rfm_segment = :segment,"
    " rfm_last_purchase_at = :r, rfm_purchase_count = :f, rfm_revenue = :m"
    " WHERE customer_id = :id")
SCORE_WRITE = sa.text(
    "UPDATE customers SET rfm_score = :score, rfm_segment = :segment WHERE customer_id = :id")


def _write_movers(connection: sa.Connection, movers: Iterable[Mover], bounds: Bounds) -> None:
    rows = []
    for mover in movers:
        score, segment = _score(mover.new, bounds) if mover.new is not None else (None, None)
        rows.append({"id": mover.customer_id, "score": score, "segment": segment,
                     **mover.values})
    if rows:
        connection.execute(MOVER_WRITE, rows)


def _write_crossed(connection: sa.Connection, crossed: set[str], bounds: Bounds) -> None:
    ids = sorted(crossed)
    query = sa.select(c.customer_id, raw(c.rfm_last_purchase_at), c.rfm_purchase_count,
                      raw(RFM_KEYS["m"]), c.rfm_score, c.rfm_segment)
    rows = []
    for first in range(0, len(ids), CHUNK):
        chunk = ids[first:first + CHUNK]
        for customer_id, r, f, m, score, segment in connection.execute(
                query.where(c.customer_id.in_(chunk))):
            keys = {"r": (r, customer_id), "f": (f, customer_id), "m": (m, customer_id)}
            new = _score(keys, bounds)
            if new != (score, segment):
                rows.append({"id": customer_id, "score": new[0], "segment": new[1]})
    if rows:
        connection.execute(SCORE_WRITE, rows)
