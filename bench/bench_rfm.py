"""Benchmark RFM kept from the last ranking: a small event sync into a large base, end to end.

Each round syncs two fresh files of `--events` events (a fifth of them purchases, for existing
customers picked at random, the rest logins and page views) with `sync_events`, the whole call:
read, insert, fact refresh, RFM. One file goes the usual way (RFM re-scores the movers and the
customers they push across a bound); before the other the last ranking's bounds are withdrawn,
so its RFM ranks everyone again, as every event sync did before. The two alternate in one
process, so the ratio compares like with like on a noisy machine; medians are printed.

The base is built once with `--build DATA` (sync_customers + sync_events of a generated folder,
e.g. bench/out/data-1000000-s1-csv-few; run it under `flock /work/bench.lock` at 1M) and kept:
later runs add their few thousand events to it.

    python bench/bench_rfm.py --url sqlite:///bench/out/rfm/base-1m-few.db [--build DATA]
    python bench/bench_rfm.py --pg URL --build bench/out/data-100000-s1-csv-few
    options: --events 1000 --rounds 5 --check (scores equal to the full definition afterwards)

`--first-ranking` (a SQLite base) measures instead what the RFM indexes cost the first ranking
of everyone (every score and ranked value new, as after a first load): on copies of the base,
with the indexes kept up to date against dropped before and built again after, alternating.

    python bench/bench_rfm.py --url sqlite:///bench/out/rfm/base-100k-few.db --first-ranking
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.store.facts import customers, rfm_scores
from engine.store.open import open_store
from engine.store.tables import rankings
from engine.sync.ingest import sync_customers, sync_events

PURCHASE_SHARE = 0.2  # about the share of purchases among the few-shape's events
LATEST = datetime(2025, 1, 1, tzinfo=UTC)


def build(engine: sa.Engine, data: Path) -> dict[str, float]:
    """Load the base (customers, then events: the first ranking of everyone) when it is empty."""
    with engine.connect() as connection:
        if connection.execute(sa.select(sa.func.count()).select_from(customers)).scalar_one():
            return {}
    timings = {}
    for kind, function in (("customers", sync_customers), ("events", sync_events)):
        started = time.perf_counter()
        function(engine, data / f"{kind}.csv")
        timings[f"load_{kind}_s"] = round(time.perf_counter() - started, 1)
    return timings


def sample_ids(engine: sa.Engine, count: int) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(sa.select(customers.c.customer_id)
                                       .order_by(sa.func.random()).limit(count)).scalars())


def write_events(folder: Path, ids: list[str], count: int, rng: random.Random) -> Path:
    """A CSV of `count` new events (fresh event ids) for these customers."""
    path = folder / f"events-{uuid.uuid4().hex[:8]}.csv"
    tag = path.stem
    lines = ["event_id,customer_id,type,occurred_at,amount,score,page"]
    for n in range(count):
        when = (LATEST - timedelta(seconds=rng.randrange(90 * 86400))).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        who = rng.choice(ids)
        if rng.random() < PURCHASE_SHARE:
            lines.append(f"{tag}-{n},{who},purchase,{when},{rng.randrange(5, 500)}.{rng.randrange(100):02d},,")
        else:
            kind = rng.choice(["login", "page_view"])
            lines.append(f"{tag}-{n},{who},{kind},{when},,,/pricing")
    path.write_text("\n".join(lines) + "\n")
    return path


def withdraw_bounds(engine: sa.Engine) -> None:
    """The next RFM refresh finds no ranking to start from: it ranks everyone."""
    with engine.begin() as connection:
        connection.execute(sa.update(rankings).values(bounds=None))


def generation(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(rankings.c.generation)).scalar_one())


def check(engine: sa.Engine) -> bool:
    """Stored scores equal the full definition's, for every customer."""
    scores = rfm_scores()
    c = customers.c
    with engine.connect() as connection:
        wrong = connection.execute(
            sa.select(sa.func.count()).select_from(
                customers.outerjoin(scores, scores.c.customer_id == c.customer_id))
            .where(sa.or_(c.rfm_score.is_distinct_from(scores.c.score),
                          c.rfm_segment.is_distinct_from(scores.c.segment)))).scalar_one()
    return bool(wrong == 0)


def measure(url: str, data: Path | None, events: int, rounds: int, verify: bool) -> dict[str, Any]:
    started = time.perf_counter()
    engine = open_store(url)  # a base made before migration 0005 is carried over here
    result: dict[str, Any] = {"url": url.split("?")[0], "open_s": round(time.perf_counter() - started, 1)}
    if data is not None:
        result.update(build(engine, data))
    with engine.connect() as connection:
        result["customers"] = connection.execute(
            sa.select(sa.func.count()).select_from(customers)).scalar_one()
        result["ranked"] = connection.execute(sa.select(rankings.c.ranked)).scalar_one()
        no_bounds = connection.execute(sa.select(rankings.c.bounds)).scalar_one() is None
    if no_bounds:  # the first ranking after the migration: everyone, once, outside the rounds
        file_rng = random.Random(0)
        with tempfile.TemporaryDirectory() as folder:
            path = write_events(Path(folder), sample_ids(engine, 1000), 10, file_rng)
            started = time.perf_counter()
            sync_events(engine, path)
            result["first_ranking_sync_s"] = round(time.perf_counter() - started, 2)
    ids = sample_ids(engine, 20_000)
    rng = random.Random(1)
    times: dict[str, list[float]] = {"incremental": [], "full": []}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(rounds):
            order = ("incremental", "full") if round_ % 2 == 0 else ("full", "incremental")
            for mode in order:
                path = write_events(Path(folder), ids, events, rng)
                if mode == "full":
                    withdraw_bounds(engine)
                before = generation(engine)
                started = time.perf_counter()
                sync_events(engine, path)
                times[mode].append(time.perf_counter() - started)
                assert generation(engine) == before + 1  # one ranking, of the kind asked
    for mode, values in times.items():
        result[f"{mode}_s"] = [round(v, 3) for v in values]
        result[f"{mode}_median_s"] = round(statistics.median(values), 3)
    result["full_over_incremental"] = round(result["full_median_s"]
                                            / result["incremental_median_s"], 1)
    result["target_met"] = result["incremental_median_s"] < 1.0
    if verify:
        result["scores_equal_definition"] = check(engine)
    engine.dispose()
    return result


RFM_INDEXES = ("ix_customers_rfm_r", "ix_customers_rfm_f", "ix_customers_rfm_m",
               "ix_customers_rfm_moved")


def first_ranking(url: str, rounds: int) -> dict[str, Any]:
    """rank_everyone from nothing ranked, indexes kept against rebuilt, on copies of the base."""
    from engine.sync.rfm import rank_everyone

    source = Path(url.removeprefix("sqlite:///"))
    work = source.with_suffix(".first-ranking.db")
    times: dict[str, list[float]] = {"kept": [], "rebuilt": []}
    for round_ in range(rounds):
        for mode in ("kept", "rebuilt") if round_ % 2 == 0 else ("rebuilt", "kept"):
            shutil.copy(source, work)
            engine = open_store(f"sqlite:///{work}")
            with engine.begin() as connection:
                connection.execute(sa.update(customers).values(
                    rfm_score=None, rfm_segment=None, rfm_last_purchase_at=None,
                    rfm_purchase_count=0, rfm_revenue=0))
                connection.execute(sa.update(rankings).values(bounds=None))
            indexes = [ix for ix in customers.indexes if ix.name in RFM_INDEXES]
            started = time.perf_counter()
            with engine.begin() as connection:
                if mode == "rebuilt":
                    for index in indexes:
                        index.drop(connection)
                rank_everyone(connection) if mode == "kept" else _rank_without(connection)
                if mode == "rebuilt":
                    for index in indexes:
                        index.create(connection)
                    _save_after(connection)
            times[mode].append(time.perf_counter() - started)
            engine.dispose()
    work.unlink()
    return {f"{mode}_s": [round(v, 2) for v in values] for mode, values in times.items()} | {
        f"{mode}_median_s": round(statistics.median(values), 2) for mode, values in times.items()}


def _rank_without(connection: sa.Connection) -> None:
    """rank_everyone's writes, without its bounds (their walks need the indexes)."""
    from engine.store.tables import revenue
    from engine.sync.rfm import _scored

    scored, which = _scored()
    changed = sa.select(scored).where(which).subquery("rfm_changed")
    c = customers.c
    connection.execute(sa.update(customers).where(c.customer_id == changed.c.customer_id).values(
        rfm_score=changed.c.score, rfm_segment=changed.c.segment,
        rfm_last_purchase_at=changed.c.last_purchase_at,
        rfm_purchase_count=changed.c.purchase_count,
        rfm_revenue=revenue(changed.c.total_spent)))


def _save_after(connection: sa.Connection) -> None:
    from engine.sync.rfm import _save_bounds

    _save_bounds(connection, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="the base database (SQLite URL or any SQLAlchemy URL)")
    parser.add_argument("--pg", help="a PostgreSQL URL (its own schema: it is written)")
    parser.add_argument("--build", type=Path, help="a generated data folder to load when empty")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--first-ranking", action="store_true")
    args = parser.parse_args(argv)
    url = args.pg or args.url
    if url is None:
        parser.error("give --url or --pg")
    if args.first_ranking:
        result = first_ranking(url, args.rounds)
    else:
        result = measure(url, args.build, args.events, args.rounds, args.check)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key}: {value}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
