"""SQLite and PostgreSQL side by side (issue 14 part 4): the same files, the same measurements.

Per size and data shape (bench/gen_data.py's `many`, ~8.5 events per customer, and `few`, 0-6),
the same generated CSV files are loaded into a fresh SQLite file and a fresh PostgreSQL schema,
and each backend is measured against a baseline on the SAME backend, so the ratios compare
Retain's path on each database with what that database can do at best:

- **ingest**: `sync_customers` then `sync_events`, each backend in its own child process (its
  peak RSS is its own), next to a bare bulk load of the same rows into tables with the same
  keys and indexes (Retain's schema, created before the clock): SQLite `executemany` as
  bench/bench_sync.py's baseline, PostgreSQL `COPY`. Rows are parsed before the clock.
- **whole-base evaluation**: every sample playbook and bench/playbooks/winback-four.yaml: the
  engine's statement counted as the dry-run counts it (`engine.query.evaluate.count` over
  `compose`, what engine/plan/build.py runs) against a hand-written query returning the same
  rows, counted the same way, on the same connection. The rows are compared once first (the
  same-answer check; a mismatch stops the run). Rounds interleaved, medians kept.
- **RFM**: ranking everyone again (`engine.sync.rfm.rank_everyone`: what a first load, or a sync
  that moved more than a twentieth of the ranked customers, ends with) in a transaction rolled
  back, next to the bare ranking (three NTILE window functions, counted). Then, last because it writes,
  a sync of 1,000 new purchase events (`sync_events` end to end, facts and RFM included) in a
  child per backend: the hook `small_sync` measures whatever RFM path the code has (a full
  recompute before issue 14's incremental refresh, the incremental one after).
- **the retention report**: `engine.reports.retention.build` (monthly) against bench_reports'
  baseline, one `COUNT(DISTINCT customer_id)` per monthly boundary (S only, less than the
  report computes), whose S must equal the report's.

Machine: heavy (1M) runs take the shared lock: `flock /work/bench.lock python bench/...`.

    python bench/bench_side.py --sizes 100000 --shapes few,many \\
        --pg postgresql://postgres@127.0.0.1:5432/test [--repeat 3] [--json] [--keep] [--vacuum]

`--vacuum` runs VACUUM (ANALYZE) on PostgreSQL's tables after the syncs (outside every
clock), as autovacuum would on a server that has it on; without it, the queries meet what sync
leaves (docs/BENCHMARKS.md, "PostgreSQL side by side", says what that costs).

Databases: bench/out/pgbench/pgbench_<N>_<shape>.db and the schema pgbench_<N>_<shape> (dropped
at the end unless --keep; --reuse measures kept ones again without syncing); the results also go
to bench/out/pgbench/side-results-<start time>.json.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
CHUNK = 50_000
SMALL_SYNC = 1_000
WINDOW_DAYS = 90


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _dialect(url: str) -> str:
    return "postgresql" if url.startswith("postgres") else "sqlite"


# --- ingest (children) -------------------------------------------------------------------------


def child_sync(url: str, data: Path) -> dict[str, Any]:
    """sync_customers then sync_events into a fresh, migrated database, each timed."""
    from gen_data import END

    from engine.store.open import open_store
    from engine.sync.ingest import sync_customers, sync_events

    engine = open_store(url)  # migrations are set-up, not sync
    result: dict[str, Any] = {}
    for kind in ("customers", "events"):
        started = time.perf_counter()
        if kind == "customers":
            report = sync_customers(engine, data / "customers.csv", now=END)
        else:
            report = sync_events(engine, data / "events.csv")
        result[kind] = {"seconds": time.perf_counter() - started, "rows": report.read,
                        "rejected": len(report.rejected)}
    engine.dispose()
    result["peak_mb"] = _peak_mb()
    return result


def _event_chunks(path: Path, typed: bool) -> Iterator[list[tuple[Any, ...]]]:
    """Rows for Retain's `events` table, parsed the simplest way that is still right; `typed`:
    aware datetimes (PostgreSQL), else the text SQLite stores."""
    chunk: list[tuple[Any, ...]] = []
    with path.open(encoding="utf-8", newline="") as handle:
        for r in csv.DictReader(handle):
            extra = {k: v for k, v in r.items()
                     if k not in ("event_id", "customer_id", "type", "occurred_at") and v != ""}
            when = datetime.fromisoformat(r["occurred_at"])
            amount, score = extra.get("amount"), extra.get("score")
            chunk.append((r["event_id"], r["customer_id"], r["type"],
                          when if typed else when.strftime("%Y-%m-%d %H:%M:%S.%f"),
                          None if amount is None else float(amount),
                          None if score is None else float(score), json.dumps(extra)))
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def child_bare(url: str, data: Path) -> dict[str, Any]:
    """The floor: the same customer ids and events, pre-parsed, bulk-loaded into Retain's own
    tables (same keys and indexes) by the database's bulk path: executemany or COPY."""
    from engine.store.open import open_store

    open_store(url).dispose()  # Retain's schema, indexes included, outside the clock
    with (data / "customers.csv").open(encoding="utf-8", newline="") as handle:
        ids = [(r["customer_id"],) for r in csv.DictReader(handle)]
    postgresql = _dialect(url) == "postgresql"
    chunks = list(_event_chunks(data / "events.csv", typed=postgresql))
    columns = "event_id, customer_id, type, occurred_at, amount, score, properties"
    if postgresql:
        import psycopg

        raw = psycopg.connect(url.split("?")[0], options=_options(url))
        started = time.perf_counter()
        with raw.cursor() as cursor, cursor.copy(
                "COPY customers (customer_id, tags, attributes, purchase_count, total_spent,"
                " points_balance) FROM STDIN") as copy:
            for (customer_id,) in ids:
                copy.write_row((customer_id, "[]", "{}", 0, 0, 0))
        raw.commit()
        customers_s = time.perf_counter() - started
        started = time.perf_counter()
        for chunk in chunks:
            with raw.cursor() as cursor, cursor.copy(f"COPY events ({columns}) FROM STDIN") as copy:
                for row in chunk:
                    copy.write_row(row)
            raw.commit()
        events_s = time.perf_counter() - started
    else:
        raw = sqlite3.connect(url.removeprefix("sqlite:///"))
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
            raw.execute(f"PRAGMA {pragma}")
        started = time.perf_counter()
        raw.executemany("INSERT INTO customers (customer_id, tags, attributes, purchase_count,"
                        " total_spent, points_balance) VALUES (?, '[]', '{}', 0, 0, 0)", ids)
        raw.commit()
        customers_s = time.perf_counter() - started
        started = time.perf_counter()
        for chunk in chunks:
            raw.executemany(f"INSERT INTO events ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?)", chunk)
            raw.commit()
        events_s = time.perf_counter() - started
    raw.close()
    return {"customers": {"seconds": customers_s, "rows": len(ids)},
            "events": {"seconds": events_s, "rows": sum(map(len, chunks))},
            "peak_mb": _peak_mb()}


def _options(url: str) -> str:
    """The `options=` of a PostgreSQL URL (the search_path), decoded, for a bare psycopg."""
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(url).query).get("options", [""])[0]


def small_events(data: Path, target: Path) -> Path:
    """SMALL_SYNC new purchases (ids `side-*`) for customers spread over the file, at the
    generator's end: the everyday small sync into a large base."""
    from gen_data import END

    with (data / "customers.csv").open(encoding="utf-8", newline="") as handle:
        ids = [r["customer_id"] for r in csv.DictReader(handle)]
    step = max(len(ids) // SMALL_SYNC, 1)
    with target.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["event_id", "customer_id", "type", "occurred_at", "amount"])
        for n in range(SMALL_SYNC):
            when = END - timedelta(minutes=SMALL_SYNC - n)
            out.writerow([f"side-{n:06d}", ids[(n * step) % len(ids)], "purchase",
                          when.strftime("%Y-%m-%dT%H:%M:%SZ"), f"{20 + n % 180}.50"])
    return target


def small_sync(url: str, events_file: Path) -> dict[str, Any]:
    """The hook for issue 14 part 3 (RFM without a full recompute): `sync_events` of 1,000 new
    events into the loaded base, end to end (facts and RFM). It measures whatever RFM refresh
    the code has; compare the commit measured with `git log` for the `rfm` work."""
    from engine.store.open import open_store
    from engine.sync.ingest import sync_events

    engine = open_store(url)
    started = time.perf_counter()
    report = sync_events(engine, events_file)
    seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "rows": report.read, "inserted": report.inserted,
            "peak_mb": _peak_mb()}


# --- hand-written SQL, spelled per database --------------------------------------------------

ISO_KEY = {"sqlite": "strftime('%Y-%m-%dT%H:%M:%SZ', {})",
           "postgresql": """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24\\:MI\\:SS"Z"')"""}
MONTH_DAY = {"sqlite": "substr({}, 6, 5)", "postgresql": "to_char({}, 'MM-DD')"}

NOT_ENROLLED = """NOT EXISTS (SELECT 1 FROM enrollments n WHERE n.playbook_id = '{pid}'
                   AND n.customer_id = c.customer_id AND {keep_out})"""
EXISTED = "(c.created_at IS NULL OR c.created_at <= :as_of)"

HAND_SQL: dict[str, str] = {
    "winback-30d": """
        SELECT c.customer_id, {key_last} FROM customers c
        WHERE c.last_active_at <= :days_30_ago AND c.email IS NOT NULL AND c.purchase_count >= 1
          AND (c.last_emailed_at IS NULL OR c.last_emailed_at <= :days_7_ago) AND {existed}
          AND {not_enrolled}""",
    "winback-four": """
        SELECT c.customer_id, {key_last} FROM customers c
        WHERE c.last_active_at <= :days_30_ago AND c.total_spent > 100
          AND c.purchase_count >= 2 AND c.segment IN ('gold', 'silver') AND {existed}
          AND {not_enrolled}""",
    "vip-care": """
        SELECT c.customer_id, :now_key FROM customers c
        WHERE (c.rfm_segment IN ('champion', 'cant_lose')
               OR (c.total_spent >= 5000 AND c.purchase_count >= 10)) AND {existed}
          AND {not_enrolled}""",
    "churn-warning": """
        SELECT c.customer_id, :now_key FROM customers c
        JOIN (SELECT customer_id FROM events
              WHERE type = 'purchase' AND occurred_at > :days_90_ago AND occurred_at <= :as_of
              GROUP BY customer_id
              HAVING count(*) >= 3 AND max(occurred_at) <= :days_30_ago) p
          ON p.customer_id = c.customer_id
        WHERE c.email IS NOT NULL AND {existed} AND {not_enrolled}""",
    "negative-feedback": """
        SELECT e.customer_id, e.event_id FROM events e JOIN customers c
          ON c.customer_id = e.customer_id
        WHERE e.type = 'feedback' AND e.occurred_at > :day_ago AND e.occurred_at <= :as_of
          AND e.score <= 6 AND {existed} AND {not_enrolled}""",
    "purchase-points": """
        SELECT e.customer_id, e.event_id FROM events e JOIN customers c
          ON c.customer_id = e.customer_id
        WHERE e.type = 'purchase' AND e.occurred_at > :day_ago AND e.occurred_at <= :as_of
          AND e.amount > 0 AND {existed} AND {not_enrolled}""",
    "welcome-series": """
        SELECT e.customer_id, e.event_id FROM events e JOIN customers c
          ON c.customer_id = e.customer_id
        WHERE e.type = 'purchase' AND e.occurred_at > :day_ago AND e.occurred_at <= :as_of
          AND NOT EXISTS (SELECT 1 FROM events p
                          WHERE p.customer_id = e.customer_id AND p.type = 'purchase'
                            AND (p.occurred_at < e.occurred_at
                                 OR (p.occurred_at = e.occurred_at AND p.id < e.id)))
          AND c.email IS NOT NULL AND {existed} AND {not_enrolled}""",
    "birthday-greeting": """
        SELECT c.customer_id, {year} FROM customers c
        WHERE ({fires}) AND c.email IS NOT NULL AND {existed} AND {not_enrolled}""",
}
KEEP_OUT = {  # what keeps a customer out, per playbook (its reentry and trigger)
    "winback-30d": "n.occurrence_key = {key_last}",
    "winback-four": "n.occurrence_key = {key_last}",
    "vip-care": "(n.occurrence_key = :now_key OR n.entered_at > :days_180_ago"
                " OR n.left_at IS NULL)",
    "churn-warning": "(n.occurrence_key = :now_key OR n.entered_at > :days_90_ago"
                     " OR n.left_at IS NULL)",
    "negative-feedback": "n.occurrence_key = e.event_id",
    "purchase-points": "n.occurrence_key = e.event_id",
    "welcome-series": "n.occurrence_key = e.event_id",
    "birthday-greeting": "n.occurrence_key = {year}",
}


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def hand_sql(playbook: Any, moment: Any, dialect: str) -> tuple[str, dict[str, Any]]:
    """The hand-written query of `playbook` for `dialect`, and its parameters."""
    parts = {"key_last": ISO_KEY[dialect].format("c.last_active_at"), "existed": EXISTED,
             "fires": "", "year": ""}
    if playbook.id == "birthday-greeting":
        from bench_eval import birthday_parts

        parts.update(birthday_parts(playbook, moment, MONTH_DAY[dialect].format("c.birthday"),
                                    "1 = 0"))
    keep_out = KEEP_OUT[playbook.id].format(**parts)
    parts["not_enrolled"] = NOT_ENROLLED.format(pid=playbook.id, keep_out=keep_out)
    return HAND_SQL[playbook.id].format(**parts), _bounds(moment.as_of, dialect)


def _bounds(as_of: datetime, dialect: str) -> dict[str, Any]:
    """as_of and the window starts before it: stored text on SQLite, timestamptz on PostgreSQL."""
    from engine.clock import iso

    days = {"day": 1, "days_7": 7, "days_30": 30, "days_90": 90, "days_180": 180}
    moments = {"as_of": as_of, **{f"{k}_ago": as_of - timedelta(days=n) for k, n in days.items()}}
    if dialect == "sqlite":
        moments = {k: _stored(v) for k, v in moments.items()}
    return {**moments, "now_key": iso(as_of)}


def _stored(moment: datetime) -> str:
    """An instant as SQLite stores Retain's times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# --- evaluation, RFM and the report (one child, both databases, interleaved) ------------------


def _timed(run: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = run(*args, **kwargs)
    return time.perf_counter() - started, value


RANKING = """SELECT count(*) FROM (SELECT customer_id,
      ntile(5) OVER (ORDER BY last_purchase_at, customer_id{c}) AS r,
      ntile(5) OVER (ORDER BY purchase_count, customer_id{c}) AS f,
      ntile(5) OVER (ORDER BY round(total_spent{n}, 4), customer_id{c}) AS m
    FROM customers WHERE purchase_count > 0) AS ranked"""


def _ranking(dialect: str) -> str:
    """The bare RFM ranking (DESIGN 1's three NTILEs, ties by customer_id), counted."""
    pg = dialect == "postgresql"
    return RANKING.format(c=' COLLATE "C"' if pg else "", n="::numeric" if pg else "")


def _boundaries(report: Any) -> list[datetime]:
    periods = report.to_json()["periods"]
    texts = [p["start"] for p in periods] + ([periods[-1]["end"]] if periods else [])
    return [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in texts]


def _s_by_boundary(connection: sa.Connection, boundaries: list[datetime]) -> list[int]:
    """bench_reports' count-distinct-per-boundary baseline: S at each boundary, one query each."""
    from engine.store.facts import ENGINE_EVENT_TYPES

    sqlite = connection.dialect.name == "sqlite"
    present = [t for (t,) in connection.exec_driver_sql("SELECT DISTINCT type FROM events")]
    types = [t for t in present if t not in ENGINE_EVENT_TYPES]
    where = "" if types == present else \
        f"type IN ({', '.join(map(_quote, types))}) AND "
    query = sa.text(f"SELECT COUNT(DISTINCT customer_id) FROM events WHERE {where}"
                    "occurred_at >= :start AND occurred_at < :at")
    found = []
    for at in boundaries:
        start = at - timedelta(days=WINDOW_DAYS)
        found.append(connection.execute(query, {
            "start": _stored(start) if sqlite else start,
            "at": _stored(at) if sqlite else at}).scalar_one())
    return found


Times = dict[str, list[float]]
Connections = dict[str, sa.Connection]


def _orders(connections: Connections, repeat: int) -> Iterator[tuple[int, list[str]]]:
    """Each round's order of the databases, flipped every round."""
    for round_ in range(repeat):
        yield round_, list(connections) if round_ % 2 == 0 else list(reversed(connections))


def _cases(connections: Connections, playbooks: list[Any], moments: dict[str, Any]
           ) -> tuple[dict[tuple[str, str], tuple[Any, Any, dict[str, Any]]], dict[str, int]]:
    """Each playbook's statement and hand-written query per database, after the same-answer
    check (untimed; it also warms the caches)."""
    from engine.query.evaluate import compose

    cases: dict[tuple[str, str], tuple[Any, Any, dict[str, Any]]] = {}
    entering: dict[str, int] = {}
    for playbook in playbooks:
        for name, connection in connections.items():
            tc = moments[name].trigger_context(playbook.id)
            query = compose(playbook, tc, playbook.trigger.sql(tc, playbook.document.backfill))
            sql, params = hand_sql(playbook, moments[name], name)
            rows = query.subquery()
            engine_rows = sorted(map(tuple, connection.execute(
                sa.select(rows.c.customer_id, rows.c.occurrence)).all()))
            hand_rows = sorted(map(tuple, connection.execute(sa.text(sql), params).all()))
            if engine_rows != hand_rows:
                raise SystemExit(f"{playbook.id} on {name}: hand-written SQL answers differently"
                                 f" ({len(hand_rows)} rows, the engine {len(engine_rows)})")
            if entering.setdefault(playbook.id, len(engine_rows)) != len(engine_rows):
                raise SystemExit(f"{playbook.id}: SQLite and PostgreSQL answer differently")
            counted = sa.text(f"SELECT count(*) FROM ({sql}) AS hand")
            cases[(playbook.id, name)] = (query, counted, params)
        connection.rollback()
    return cases, entering


def _evaluations(connections: Connections, playbooks: list[Any], moments: dict[str, Any],
                 repeat: int, times: Times) -> dict[str, int]:
    """The engine's count (as the dry-run counts) against the hand-written query's, per round."""
    from engine.query.evaluate import count

    cases, entering = _cases(connections, playbooks, moments)
    for round_, order in _orders(connections, repeat):
        for playbook in playbooks:
            for name in order:
                query, counted, params = cases[(playbook.id, name)]
                connection = connections[name]
                times[f"eval|{playbook.id}|{name}|engine"].append(
                    _timed(count, connection, query)[0])
                times[f"eval|{playbook.id}|{name}|hand"].append(
                    _timed(connection.execute, counted, params)[0])
        print(f"evaluation round {round_ + 1}", file=sys.stderr, flush=True)
    for connection in connections.values():
        connection.rollback()
    return entering


def _reports(connections: Connections, repeat: int, times: Times) -> int:
    """The monthly retention report against the per-boundary baseline, whose S must match."""
    from engine.reports import retention
    from engine.reports.periods import PeriodKind

    reports: dict[str, Any] = {}
    for round_, order in _orders(connections, repeat):
        for name in order:
            connection = connections[name]
            seconds, report = _timed(retention.build, connection, kind=PeriodKind.MONTH)
            connection.rollback()
            times[f"report|{name}|engine"].append(seconds)
            seconds, found = _timed(_s_by_boundary, connection, _boundaries(report))
            connection.rollback()
            times[f"report|{name}|hand"].append(seconds)
            periods = report.to_json()["periods"]
            wanted = [p["start_customers"] for p in periods] + [periods[-1]["end_customers"]]
            if found != wanted:
                raise SystemExit(f"retention on {name}: S differs from the baseline's")
            reports[name] = {"periods": len(periods), "crr": [p["crr"] for p in periods]}
        print(f"report round {round_ + 1}", file=sys.stderr, flush=True)
    if reports["sqlite"] != reports["postgresql"]:
        raise SystemExit("retention: SQLite and PostgreSQL reports differ")
    return int(reports["sqlite"]["periods"])


def _rfm(connections: Connections, repeat: int, times: Times) -> None:
    """Everyone ranked again (rolled back) against the bare ranking, per round."""
    from engine.sync.rfm import rank_everyone

    for round_, order in _orders(connections, repeat):
        for name in order:
            connection = connections[name]
            connection.rollback()
            with connection.begin() as transaction:
                times[f"rfm|{name}|engine"].append(_timed(rank_everyone, connection)[0])
                transaction.rollback()
            times[f"rfm|{name}|hand"].append(
                _timed(connection.exec_driver_sql, _ranking(name))[0])
            connection.rollback()
        print(f"rfm round {round_ + 1}", file=sys.stderr, flush=True)


def child_measure(urls: dict[str, str], repeat: int) -> dict[str, Any]:
    """Evaluation, the retention report and the RFM refresh on both databases, rounds
    interleaved (database by database inside each round, the order flipped every round).

    Evaluation and the report read through `open_reader`, as `retain dry-run` and `retain
    report` do (on PostgreSQL: READ ONLY sessions without JIT); the RFM refresh runs on a
    writer's engine, as sync runs it."""
    from engine.format.validation import load_valid_playbooks
    from engine.query.evaluate import latest_event_time, prepare
    from engine.store.open import make_engine, open_reader

    playbooks = sorted(load_valid_playbooks([ROOT / "playbooks", HERE / "playbooks"]),
                       key=lambda p: p.id)
    times: Times = defaultdict(list)
    readers = {name: open_reader(url) for name, url in urls.items()}
    connections = {name: engine.connect() for name, engine in readers.items()}
    latest = {name: latest_event_time(c) for name, c in connections.items()}
    as_of = latest["sqlite"]
    if as_of is None or any(v != as_of for v in latest.values()):
        raise SystemExit(f"the databases' latest events differ: {latest}")
    moments = {name: prepare(c, as_of, playbooks) for name, c in connections.items()}
    entering = _evaluations(connections, playbooks, moments, repeat, times)
    periods = _reports(connections, repeat, times)
    _close(connections, readers)
    writers = {name: make_engine(url) for name, url in urls.items()}
    connections = {name: engine.connect() for name, engine in writers.items()}
    _rfm(connections, repeat, times)
    _close(connections, writers)
    return {"as_of": as_of.isoformat(), "entering": entering, "periods": periods,
            "medians": {key: statistics.median(values) for key, values in times.items()},
            "rounds": dict(times)}


def _close(connections: Connections, engines: dict[str, sa.Engine]) -> None:
    for connection in connections.values():
        connection.close()
    for engine in engines.values():
        engine.dispose()


# --- orchestration -----------------------------------------------------------------------------


def _child(*args: str) -> dict[str, Any]:
    """This script as a child measurement; its last stdout line is the JSON result."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                          text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise SystemExit(f"child {args[:1]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def _pg_url(pg: str, schema: str) -> str:
    return f"{pg}{'&' if '?' in pg else '?'}options=-csearch_path%3D{schema}"


def _schema(pg: str, schema: str, fresh: bool) -> None:
    """Drop `schema` (and create it again when `fresh`)."""
    from engine.store.open import normalize_url

    admin = sa.create_engine(normalize_url(pg))
    with admin.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        if fresh:
            connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    admin.dispose()


def _vacuum(url: str) -> float:
    """VACUUM (ANALYZE) the customers and events of a PostgreSQL schema, as autovacuum (off on
    the bench machine, on by default elsewhere) would after a large sync; its seconds."""
    from engine.store.open import normalize_url

    engine = sa.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    started = time.perf_counter()
    with engine.connect() as connection:
        connection.exec_driver_sql("VACUUM (ANALYZE) customers, events")
    engine.dispose()
    return time.perf_counter() - started


def _sqlite_fresh(path: Path) -> str:
    for leftover in (path, *(Path(f"{path}{tail}") for tail in ("-wal", "-shm"))):
        leftover.unlink(missing_ok=True)
    return f"sqlite:///{path}"


def measure(size: int, shape: str, pg: str, repeat: int, keep: bool, reuse: bool,
            vacuum: bool = False) -> dict[str, Any]:
    """Every measurement of one size and shape on both databases."""
    from bench_sync import ensure_data  # bench/ is sys.path[0] as a script

    data = ensure_data(size, 1, "csv", shape)  # the shared files; generated if missing
    work = OUT / "pgbench"
    work.mkdir(parents=True, exist_ok=True)
    name = f"pgbench_{size}_{shape}"
    db = work / f"{name}.db"
    urls = {"sqlite": f"sqlite:///{db}", "postgresql": _pg_url(pg, name)}
    result: dict[str, Any] = {"size": size, "shape": shape,
                              "events": json.loads((data / "meta.json").read_text())["counts"]
                              ["events"]}
    try:
        if not reuse:
            _sqlite_fresh(db)
            _schema(pg, name, fresh=True)
            for backend, url in urls.items():
                print(f"{size:,} {shape}: sync into {backend}", file=sys.stderr, flush=True)
                result[f"sync|{backend}"] = _child("sync", url, str(data))
                print(f"{size:,} {shape}: bare load into {backend}", file=sys.stderr, flush=True)
                if backend == "sqlite":
                    bare = _sqlite_fresh(work / f"{name}-bare.db")
                else:
                    _schema(pg, f"{name}_bare", fresh=True)
                    bare = _pg_url(pg, f"{name}_bare")
                try:
                    result[f"bare|{backend}"] = _child("bare", bare, str(data))
                finally:
                    if backend == "sqlite":
                        _sqlite_fresh(work / f"{name}-bare.db")
                    else:
                        _schema(pg, f"{name}_bare", fresh=False)
        if vacuum:
            result["vacuum_seconds"] = _vacuum(urls["postgresql"])
        print(f"{size:,} {shape}: evaluation, report, RFM", file=sys.stderr, flush=True)
        result["measure"] = _child("measure", json.dumps(urls), str(repeat))
        small = small_events(data, work / f"{name}-small.csv")
        for backend, url in urls.items() if not reuse else ():
            print(f"{size:,} {shape}: {SMALL_SYNC:,}-event sync into {backend}", file=sys.stderr,
                  flush=True)
            result[f"small|{backend}"] = _child("small", url, str(small))
    finally:
        if not keep:
            _sqlite_fresh(db)
            _schema(pg, name, fresh=False)
    return result


BACKENDS = ("sqlite", "postgresql")


def _row(lines: list[str], label: str, pairs: dict[str, tuple[float, float | None]]) -> None:
    """One measurement: each database's time, its baseline's and their ratio; PG / SQLite."""
    cells = []
    for backend in BACKENDS:
        own, base = pairs[backend]
        cells += [f"{own:.3f}", "" if base is None else f"{base:.3f}",
                  "" if base is None else _ratio(own, base)]
    lines.append(f"| {label} | {' | '.join(cells)} | "
                 f"{_ratio(pairs['postgresql'][0], pairs['sqlite'][0])} |")


def _ratio(top: float, bottom: float) -> str:
    return f"{top / bottom:.2f}x" if bottom else "n/a"


def markdown(results: list[dict[str, Any]]) -> str:
    """One table per size and shape: a row per measurement, SQLite and PostgreSQL side by side."""
    out = []
    for r in results:
        vacuumed = ("" if "vacuum_seconds" not in r else
                    f", PostgreSQL vacuumed before the queries ({r['vacuum_seconds']:.0f} s)")
        head = (f"**{r['size']:,} customers, `{r['shape']}` shape ({r['events']:,} events)"
                f"{vacuumed}**\n\n"
                "| measurement | SQLite s | SQLite baseline s | SQLite ratio "
                "| PostgreSQL s | PostgreSQL baseline s | PostgreSQL ratio | PG / SQLite |\n"
                "|---|---|---|---|---|---|---|---|")
        lines = [head]
        row = functools.partial(_row, lines)

        if "sync|sqlite" in r:
            for kind in ("customers", "events"):
                row(f"sync {kind} ({r['sync|sqlite'][kind]['rows']:,}; baseline: bare "
                    "executemany / COPY)",
                    {b: (r[f"sync|{b}"][kind]["seconds"], r[f"bare|{b}"][kind]["seconds"])
                     for b in BACKENDS})
        m = r["measure"]["medians"]
        for playbook, entering in r["measure"]["entering"].items():
            row(f"evaluate {playbook} ({entering:,} enter; baseline: hand SQL)",
                {b: (m[f"eval|{playbook}|{b}|engine"], m[f"eval|{playbook}|{b}|hand"])
                 for b in BACKENDS})
        row("RFM, everyone ranked again (baseline: the bare NTILE ranking)",
            {b: (m[f"rfm|{b}|engine"], m[f"rfm|{b}|hand"]) for b in BACKENDS})
        row(f"retention report, monthly ({r['measure']['periods']} periods; baseline: "
            "COUNT DISTINCT per boundary)",
            {b: (m[f"report|{b}|engine"], m[f"report|{b}|hand"]) for b in BACKENDS})
        if "small|sqlite" in r:
            row(f"sync of {SMALL_SYNC:,} new events into the base, end to end",
                {b: (r[f"small|{b}"]["seconds"], None) for b in BACKENDS})
        if "sync|sqlite" in r:
            rates = []
            for b in BACKENDS:
                s = r[f"sync|{b}"]
                rates.append(f"{b}: {s['customers']['rows'] / s['customers']['seconds']:,.0f} "
                             f"customers/s, {s['events']['rows'] / s['events']['seconds']:,.0f} "
                             f"events/s, sync peak {s['peak_mb']:.0f} MB (bare load "
                             f"{r[f'bare|{b}']['peak_mb']:.0f} MB)")
            lines.append("\n" + "; ".join(rates) + ".")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> None:
    """CLI entry: measure every size and shape, print the tables (or JSON)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, *rest = argv[1:]
        if kind == "sync":
            result = child_sync(rest[0], Path(rest[1]))
        elif kind == "bare":
            result = child_bare(rest[0], Path(rest[1]))
        elif kind == "small":
            result = small_sync(rest[0], Path(rest[1]))
        else:
            result = child_measure(json.loads(rest[0]), int(rest[1]))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--shapes", default="few,many")
    parser.add_argument("--pg", required=True, metavar="URL",
                        help="a PostgreSQL database; the bench makes and drops its own schemas")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (median kept)")
    parser.add_argument("--keep", action="store_true", help="keep the databases and schemas")
    parser.add_argument("--reuse", action="store_true",
                        help="measure kept databases again: no ingest, no small sync")
    parser.add_argument("--vacuum", action="store_true",
                        help="VACUUM (ANALYZE) PostgreSQL's tables before measuring queries, "
                             "as autovacuum would (off on the bench machine)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT, check=False).stdout.strip()
    results = []
    for size in (int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()):
        for shape in (s.strip() for s in args.shapes.split(",") if s.strip()):
            results.append(measure(size, shape, args.pg, args.repeat, args.keep, args.reuse,
                                   args.vacuum))
    seconds = (datetime.now(UTC) - started).total_seconds()
    document = {"started": started.isoformat(timespec="seconds"), "seconds": round(seconds),
                "commit": commit, "cpus": os.cpu_count(), "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version, "load": os.getloadavg(), "results": results}
    (OUT / "pgbench").mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M")
    (OUT / "pgbench" / f"side-results-{stamp}.json").write_text(json.dumps(document, indent=2))
    if args.json:
        print(json.dumps(document, indent=2))
        return
    print(markdown(results))
    print(f"\ncommit {commit}, started {document['started']}, {seconds:.0f} s, load "
          f"{', '.join(f'{x:.1f}' for x in document['load'])}")


if __name__ == "__main__":
    main()
