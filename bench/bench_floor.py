"""Evaluation at the floor (issue 14 part 1): the dry-run's evaluation of a four-clause win-back
against the same predicate over a narrow table of the same facts, and against a Python lambda.

The issue's target, on 1,000,000 customers: what `retain dry-run` spends deciding who enters
`bench/playbooks/winback-four.yaml` (inactive 30 days, total_spent > 100, purchase_count >= 2,
segment in [gold, silver]) within 2x of hand-written SQL over a narrow table, and at least 10x
faster than fetching those narrow rows into Python and testing each with a plain lambda. So, per
database, in ONE process, several rounds interleaved (round 1 of every method, then round 2,
...), medians kept, each method counting the same customers (checked, or the run stops):

- `engine: make_plan`: `make_plan(connection, [playbook], as_of, show=0, complete=False)` on a
  reader (`open_reader`), what the dry-run does before it plans anyone: read the moment (latest
  event, enabled versions), count who enters in SQL, decide the limits. Planning (rendering) the
  entering customers is bench_plan.py's part. `engine: prepare` and `engine: count` are its two
  parts (the moment; the statement counted through SQLAlchemy);
- `engine before (main)`: the same as main had it (1059063): the moment read with a statement
  per event type, the statement with the trigger's clauses first, over the customers table;
- the candidates, each the statement counted through the driver (`SELECT count(*) FROM (...)`):
  main's (the table, trigger first), the facts index alone (migration 0006: SQLite scans the
  covering `ix_customers_facts`), `when` first alone (over the table), and both (the engine's).
  On PostgreSQL "wide table" is a sequential scan (index scans off) and "as planned" the
  planner's choice; `hand SQL, wide table` is the narrow query's text over `customers`;
- baselines: `narrow SQL` is one hand-written query (trigger, the four clauses, created_at,
  `NOT EXISTS` against enrollments) over `floor_narrow` (CREATE TABLE AS SELECT of customer_id,
  last_active_at, created_at, total_spent, purchase_count, segment; a unique index on
  customer_id and an index on last_active_at, the one a person adds for "inactive"), spelled
  three ways: as planned (SQLite takes that index without statistics, and it is slower), a scan
  (`+last_active_at`), and a scan with the cheap clauses first (as the engine now writes it).
  The fastest of the three is the target's baseline;
- `lambda (driver rows)`: `SELECT` of the narrow rows, tested one by one with a plain lambda
  on the values as the driver hands them (SQLite: times as their ISO text, compared as text;
  PostgreSQL: datetimes), then the enrollments as a set; `lambda (typed rows)`: the same with
  each time read as a datetime first (what a record loader gives).

`--cold` also runs every method as the first query of a fresh process (a new connection: empty
SQLite page cache, new PostgreSQL backend; the OS file cache cannot be dropped here, so the
files are read from memory, not from disk), interleaved, `--cold` rounds.

    python bench/bench_floor.py --sizes 100000,1000000 --shape few --rounds 7 --cold 3
    python bench/bench_floor.py --sizes 100000 --shape many --pg postgresql://postgres@127.0.0.1:5432/test

Databases are synced once per size and shape from bench/gen_data.py's files into `--dir`
(default bench/out/floor/; PostgreSQL: a schema `floor_<shape>_<N>` kept for the next run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from bench_sync import OUT, ensure_data  # bench/ is sys.path[0] when this runs as a script
from gen_data import END

from engine.format.compile import compile_condition
from engine.format.playbook import Playbook
from engine.format.triggers import TriggerContext
from engine.format.validation import load_valid_playbooks
from engine.plan.build import make_plan
from engine.query.evaluate import _already_enrolled, compose, count, distinct_values, prepare
from engine.store.facts import customers, events, existed_at
from engine.store.open import normalize_url, open_reader, open_store
from engine.store.tables import versions
from engine.sync.ingest import sync_customers, sync_events

HERE = Path(__file__).resolve().parent
PLAYBOOK = HERE / "playbooks" / "winback-four.yaml"
AS_OF = END  # the latest generated event: the kept facts are used
TARGET_VS_NARROW = 2.0
TARGET_VS_LAMBDA = 10.0
NARROW_COLUMNS = "customer_id, last_active_at, created_at, total_spent, purchase_count, segment"
Method = Callable[[], int]

# The narrow query, as a person writes it; {t} is the table (alias c), {la} how last_active_at
# is named.
HAND = """
SELECT count(*) FROM {t}
WHERE {la} <= :cutoff AND (c.created_at IS NULL OR c.created_at <= :as_of)
  AND c.total_spent > 100 AND c.purchase_count >= 2 AND c.segment IN ('gold', 'silver')
  AND NOT EXISTS (SELECT 1 FROM enrollments n
                  WHERE n.playbook_id = 'winback-four' AND n.customer_id = c.customer_id
                    AND n.occurrence_key = {key})"""
RESET = "RESET enable_indexscan; RESET enable_indexonlyscan; RESET enable_bitmapscan"
HAND_WHEN_FIRST = """
SELECT count(*) FROM {t}
WHERE c.total_spent > 100 AND c.purchase_count >= 2 AND c.segment IN ('gold', 'silver')
  AND {la} <= :cutoff AND (c.created_at IS NULL OR c.created_at <= :as_of)
  AND NOT EXISTS (SELECT 1 FROM enrollments n
                  WHERE n.playbook_id = 'winback-four' AND n.customer_id = c.customer_id
                    AND n.occurrence_key = {key})"""
KEY = {"sqlite": "strftime('%Y-%m-%dT%H:%M:%SZ', c.last_active_at)",
       "postgresql": "to_char(c.last_active_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"}


# --- the databases ---------------------------------------------------------------------------


def ensure_sqlite(folder: Path, customers: int, shape: str) -> str:
    """A SQLite file synced once from the generated files (built under a temporary name)."""
    target = folder / f"floor-{customers}-{shape}.db"
    if not target.is_file():
        building = target.with_suffix(".building.db")
        for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
            leftover.unlink(missing_ok=True)
        _sync(f"sqlite:///{building}", customers, shape)
        building.rename(target)
    url = f"sqlite:///{target}"
    open_store(url).dispose()  # migrated to this branch's head (0006's index included)
    _ensure_narrow(url)
    return url


def ensure_pg(base: str, customers: int, shape: str) -> str:
    """A PostgreSQL schema synced once (kept between runs: drop it to rebuild)."""
    schema = f"floor_{shape}_{customers}"
    engine = sa.create_engine(normalize_url(base))
    with engine.begin() as connection:
        found = connection.exec_driver_sql(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %(s)s "
            "AND table_name = 'floor_narrow'", {"s": schema}).first()
        if found is None:
            connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine.dispose()
    url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    if found is None:
        _sync(url, customers, shape)
    else:
        open_store(url).dispose()
    _ensure_narrow(url)
    return url


def compact(url: str) -> None:
    """VACUUM FULL customers: the heap rewritten with only its live rows."""
    engine = sa.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        before = connection.exec_driver_sql("SELECT pg_relation_size('customers')").scalar()
        connection.exec_driver_sql("VACUUM FULL customers")
        after = connection.exec_driver_sql("SELECT pg_relation_size('customers')").scalar()
    engine.dispose()
    print(f"VACUUM FULL customers: heap {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB",
          file=sys.stderr)


def _heap(url: str) -> str:
    """PostgreSQL: the sizes of customers' heap, the facts index and the narrow table."""
    if not url.startswith("postgres"):
        return ""
    engine = sa.create_engine(normalize_url(url))
    with engine.connect() as connection:
        sizes = {name: connection.exec_driver_sql(f"SELECT pg_relation_size('{name}')").scalar()
                 for name in ("customers", "ix_customers_facts", "floor_narrow")}
    engine.dispose()
    return ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sizes.items())


def _sync(url: str, customers: int, shape: str) -> None:
    data = ensure_data(customers, 1, "csv", shape)
    started = time.perf_counter()
    engine = open_store(url)
    sync_customers(engine, data / "customers.csv", now=END)
    sync_events(engine, data / "events.csv")
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    print(f"synced {customers:,} ({shape}) in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)


def _ensure_narrow(url: str) -> None:
    """`floor_narrow`: the facts the predicate needs, with the indexes a person would add."""
    engine = open_store(url)
    with engine.begin() as connection:
        if sa.inspect(connection).has_table("floor_narrow"):
            engine.dispose()
            return
        connection.exec_driver_sql(f"CREATE TABLE floor_narrow AS SELECT {NARROW_COLUMNS} "
                                   "FROM customers")
        connection.exec_driver_sql("CREATE UNIQUE INDEX floor_narrow_id ON floor_narrow "
                                   "(customer_id)")
        connection.exec_driver_sql("CREATE INDEX floor_narrow_last ON floor_narrow "
                                   "(last_active_at)")
        if engine.dialect.name == "postgresql":  # as sync leaves customers: analyzed
            connection.exec_driver_sql("ANALYZE floor_narrow")
    engine.dispose()


# --- the methods -----------------------------------------------------------------------------


def methods(connection: sa.Connection, playbook: Playbook) -> dict[str, Method]:
    """Every way of counting who enters, each a function of nothing returning the count."""
    dialect = connection.dialect.name
    moment = prepare(connection, AS_OF, [playbook])
    tc = moment.trigger_context(playbook.id)
    query = compose(playbook, tc, playbook.trigger.sql(tc, playbook.document.backfill))
    counted = str(sa.select(sa.func.count()).select_from(query.subquery()).compile(
        connection, compile_kwargs={"literal_binds": True}))
    raw = connection.connection.driver_connection
    cutoff = AS_OF - timedelta(days=30)
    text = {"sqlite": lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S.%f"),
            "postgresql": lambda moment: moment}[dialect]
    params = {"cutoff": text(cutoff), "as_of": text(AS_OF)}

    def hand(table: str, la: str, template: str = HAND) -> Method:
        sql = template.format(t=table, la=la, key=KEY[dialect])
        return lambda: connection.execute(sa.text(sql), params).scalar_one()

    def driver(sql: str, before: str | None = None) -> Method:
        def run() -> int:
            cursor = raw.cursor()
            if before:
                cursor.execute(before)
            cursor.execute(sql)
            found = cursor.fetchone()[0]
            if before:  # the next method plans as the server would
                cursor.execute(RESET)
            cursor.close()
            return found
        return run

    main_sql = _trigger_first(connection, playbook, tc)  # the statement as main spelled it
    if dialect == "sqlite":
        def unindexed(sql: str) -> str:
            return sql.replace("FROM customers ", "FROM customers NOT INDEXED ", 1)
        wide, indexed = unindexed, (lambda sql: sql)
        narrow_scan = hand("floor_narrow c", "+c.last_active_at")
        narrow_first = hand("floor_narrow c", "+c.last_active_at", HAND_WHEN_FIRST)
        hand_wide = hand("customers c NOT INDEXED", "+c.last_active_at")
        main_wide = driver(unindexed(main_sql))
        variants = {"statement: main's (wide table, trigger first)": main_wide,
                    "statement: facts index, trigger first": driver(indexed(main_sql)),
                    "statement: wide table, when first": driver(wide(counted)),
                    "statement: facts index, when first (the engine's)": driver(counted)}
    else:
        seq = ("SET LOCAL enable_indexscan = off; SET LOCAL enable_indexonlyscan = off; "
               "SET LOCAL enable_bitmapscan = off")
        reset = RESET
        narrow_scan = _pg_seq(connection, hand("floor_narrow c", "c.last_active_at"))
        narrow_first = _pg_seq(connection, hand("floor_narrow c", "c.last_active_at",
                                                HAND_WHEN_FIRST))
        hand_wide = _pg_seq(connection, hand("customers c", "c.last_active_at"))
        main_wide = driver(main_sql, seq)
        variants = {"statement: main's (wide table, trigger first)": main_wide,
                    "statement: as planned, trigger first": driver(main_sql, reset),
                    "statement: wide table, when first": driver(counted, seq),
                    "statement: as planned, when first (the engine's)": driver(counted, reset)}
    return {
        "engine: make_plan": lambda: make_plan(connection, [playbook], AS_OF, show=0,
                                               complete=False).playbooks[0].entering,
        "engine before (main)": lambda: _before(connection, main_wide),
        "engine: prepare": lambda: prepare(connection, AS_OF, [playbook]) and 0,
        "engine: count": lambda: count(connection, query),
        **variants,
        "hand SQL, wide table": hand_wide,
        "narrow SQL, as planned": hand("floor_narrow c", "c.last_active_at"),
        "narrow SQL, scan": narrow_scan,
        "narrow SQL, scan, when first": narrow_first,
        "lambda (driver rows)": lambda: _lambda(connection, cutoff, typed=False),
        "lambda (typed rows)": lambda: _lambda(connection, cutoff, typed=True),
    }


def _trigger_first(connection: sa.Connection, playbook: Playbook, tc: TriggerContext) -> str:
    """The statement as main (1059063) spelled it: the trigger's clauses, created_at, then
    `when` (the engine now writes `when` first: SQLite tests its terms in the order written)."""
    part = playbook.trigger.sql(tc, playbook.document.backfill)
    where = [*part.where, existed_at(tc.as_of), compile_condition(tc.compile, playbook.when),
             ~_already_enrolled(playbook, tc, part)]
    c = customers.c
    query = sa.select(c.customer_id, part.occurrence.label("occurrence")).where(*where)
    return str(sa.select(sa.func.count()).select_from(query.subquery()).compile(
        connection, compile_kwargs={"literal_binds": True}))


def _before(connection: sa.Connection, wide: Method) -> int:
    """make_plan's evaluation as main had it (1059063): the moment read with a statement per
    event type, then the statement over the wide table."""
    for kind in distinct_values(connection, events.c.type):
        connection.execute(sa.select(sa.func.max(events.c.occurred_at))
                           .where(events.c.type == kind)).scalar()
    connection.execute(sa.select(versions.c.playbook_id, sa.func.min(versions.c.enabled_at))
                       .where(versions.c.enabled_at.is_not(None))
                       .group_by(versions.c.playbook_id)).all()
    return wide()


def _pg_seq(connection: sa.Connection, method: Method) -> Method:
    """The method with PostgreSQL's index scans off for its statement (a sequential scan)."""
    def run() -> int:
        for knob in ("indexscan", "indexonlyscan", "bitmapscan"):
            connection.exec_driver_sql(f"SET LOCAL enable_{knob} = off")
        try:
            return method()
        finally:
            for knob in ("indexscan", "indexonlyscan", "bitmapscan"):
                connection.exec_driver_sql(f"RESET enable_{knob}")
    return run


def _lambda(connection: sa.Connection, cutoff: datetime, typed: bool) -> int:
    """Fetch the narrow rows through the driver and test each in Python (plus the enrollments)."""
    raw = connection.connection.driver_connection
    cursor = raw.cursor()
    cursor.execute("SELECT occurrence_key, customer_id FROM enrollments "
                   "WHERE playbook_id = 'winback-four'")
    enrolled = set(cursor.fetchall())
    sqlite = connection.dialect.name == "sqlite"
    read = _read_sqlite_time if typed and sqlite else _same
    if sqlite and not typed:
        bound: Any = cutoff.strftime("%Y-%m-%d %H:%M:%S.%f")
        existed: Any = AS_OF.strftime("%Y-%m-%d %H:%M:%S.%f")
    else:
        bound, existed = cutoff, AS_OF
    segments = {"gold", "silver"}
    test = (lambda r: r[1] is not None and read(r[1]) <= bound  # noqa: E731 (the issue's lambda)
            and (r[2] is None or read(r[2]) <= existed)
            and r[3] > 100 and r[4] >= 2 and r[5] in segments)
    cursor.execute(f"SELECT {NARROW_COLUMNS} FROM floor_narrow")
    found = sum(1 for row in cursor if test(row) and (_key(read(row[1])), row[0]) not in enrolled)
    cursor.close()
    return found


def _same(value: Any) -> Any:
    return value


def _read_sqlite_time(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _key(moment: Any) -> str:
    if isinstance(moment, str):
        return moment[:10] + "T" + moment[11:19] + "Z"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- measuring -------------------------------------------------------------------------------


def measure(url: str, rounds: int) -> dict[str, Any]:
    """Warm: every method once untimed (the answer check), then `rounds` interleaved rounds."""
    playbook = load_valid_playbooks([PLAYBOOK])[0]
    engine = open_reader(url)
    with engine.connect() as connection:
        chosen = methods(connection, playbook)
        answers = {name: method() for name, method in chosen.items() if name != "engine: prepare"}
        if len(set(answers.values())) != 1:
            raise SystemExit(f"different answers: {answers}")
        samples: dict[str, list[float]] = {name: [] for name in chosen}
        for _ in range(rounds):
            for name, method in chosen.items():
                started = time.perf_counter()
                method()
                samples[name].append(time.perf_counter() - started)
        plans = _plans(connection)
        connection.rollback()
    engine.dispose()
    return {"entering": next(iter(answers.values())), "samples": samples, "plans": plans}


def _plans(connection: sa.Connection) -> dict[str, str]:
    """How the database runs the engine's statement (what the facts index changes)."""
    playbook = load_valid_playbooks([PLAYBOOK])[0]
    tc = prepare(connection, AS_OF, [playbook]).trigger_context(playbook.id)
    query = compose(playbook, tc, playbook.trigger.sql(tc, playbook.document.backfill))
    sql = str(sa.select(sa.func.count()).select_from(query.subquery()).compile(
        connection, compile_kwargs={"literal_binds": True}))
    if connection.dialect.name == "sqlite":
        rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
        return {"engine": "; ".join(row[3] for row in rows)}
    rows = connection.exec_driver_sql("EXPLAIN " + sql).all()
    return {"engine": "; ".join(row[0].strip() for row in rows[:4])}


def cold(url: str, rounds: int) -> dict[str, list[float]]:
    """Each method as the first query of a fresh process, interleaved."""
    names = list(methods_names())
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--url", url],
                                 check=True, capture_output=True, text=True).stdout
            samples[name].append(json.loads(out)["seconds"])
    return samples


def methods_names() -> list[str]:
    return ["engine: make_plan", "engine before (main)", "narrow SQL, as planned",
            "narrow SQL, scan", "narrow SQL, scan, when first", "lambda (driver rows)"]


def child(url: str, name: str) -> None:
    """One method, timed as the first query on a new connection (prepare is not timed)."""
    playbook = load_valid_playbooks([PLAYBOOK])[0]
    engine = open_reader(url)
    with engine.connect() as connection:
        method = methods(connection, playbook)[name]
        if name == "engine: make_plan":  # methods() ran prepare: start over on a new connection
            connection.rollback()
            engine.dispose()
            engine = open_reader(url)
            with engine.connect() as fresh:
                started = time.perf_counter()
                make_plan(fresh, [playbook], AS_OF, show=0, complete=False)
                seconds = time.perf_counter() - started
        else:
            connection.invalidate()  # a new DBAPI connection: nothing cached
            with engine.connect() as fresh:
                method = methods(fresh, playbook)[name]
                seconds = _first(fresh, method)
    engine.dispose()
    print(json.dumps({"seconds": seconds}))


def _first(connection: sa.Connection, method: Method) -> float:
    started = time.perf_counter()
    method()
    return time.perf_counter() - started


# --- what the index costs sync ---------------------------------------------------------------


def ingest_cost(folder: Path, customers: int, shape: str, rounds: int) -> dict[str, list[Any]]:
    """Sync the same files into fresh SQLite files with the facts index and with the
    single-column last_active_at index it replaced, each in a fresh process, interleaved."""
    samples: dict[str, list[Any]] = {"facts index": [], "last_active_at index": []}
    for _ in range(rounds):
        for variant in samples:
            out = subprocess.run(
                [sys.executable, __file__, "--child-ingest", variant, "--sizes", str(customers),
                 "--shape", shape, "--dir", str(folder)],
                check=True, capture_output=True, text=True).stdout
            samples[variant].append(json.loads(out))
    return samples


def child_ingest(folder: Path, customers: int, shape: str, variant: str) -> None:
    """One sync (customers, then events) into a fresh file; seconds of each on stdout."""
    data = ensure_data(customers, 1, "csv", shape)
    target = folder / "floor-ingest.db"
    for leftover in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
        leftover.unlink(missing_ok=True)
    engine = open_store(f"sqlite:///{target}")
    if variant != "facts index":  # the schema before 0006
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP INDEX ix_customers_facts")
            connection.exec_driver_sql("CREATE INDEX ix_customers_last_active_at "
                                       "ON customers (last_active_at)")
    times = {}
    for kind, function in (("customers", sync_customers), ("events", sync_events)):
        started = time.perf_counter()
        function(engine, data / f"{kind}.csv", **({"now": END} if kind == "customers" else {}))
        times[kind] = time.perf_counter() - started
    engine.dispose()
    for leftover in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
        leftover.unlink(missing_ok=True)
    print(json.dumps(times))


# --- the report ------------------------------------------------------------------------------


def report_cold(samples: dict[str, list[float]]) -> None:
    """The first query of a fresh process, per method: medians and each sample."""
    print("\n| method, cold (first query of a fresh process) | median s | samples s |")
    print("|---|---|---|")
    for name, got in samples.items():
        print(f"| {name} | {statistics.median(got):.4f} | "
              f"{', '.join(f'{x:.4f}' for x in got)} |")


def report(label: str, result: dict[str, Any]) -> None:
    samples = result["samples"]
    medians = {name: statistics.median(v) for name, v in samples.items()}
    base = min(("narrow SQL, as planned", "narrow SQL, scan", "narrow SQL, scan, when first"),
               key=lambda n: medians[n])
    narrow = medians[base]
    lam = medians["lambda (driver rows)"]

    def per_round(name: str, over: str) -> float:
        """The median of the ratio within each round (a burst of load hits both alike)."""
        return statistics.median(a / b for a, b in zip(samples[name], samples[over], strict=True))

    print(f"\n### {label}: {result['entering']:,} entering; plan: {result['plans']['engine']}\n")
    print("| method | warm median s | min-max s | / narrow SQL | lambda (driver) / it | "
          "per round: / narrow SQL | per round: lambda (driver) / it |")
    print("|---|---|---|---|---|---|---|")
    for name, median in medians.items():
        spread = samples[name]
        line = (f"| {name} | {median:.4f} | {min(spread):.4f}-{max(spread):.4f} | "
                f"{median / narrow:.2f}x | {lam / median:.1f}x | "
                f"{per_round(name, base):.2f}x | {1 / per_round(name, 'lambda (driver rows)'):.1f}x |")
        print(line)
    engine = "engine: make_plan"
    print(f"\nper round, medians: engine / narrow SQL ({base}) {per_round(engine, base):.2f}x "
          f"(target <= {TARGET_VS_NARROW}x); lambda (driver) / engine "
          f"{1 / per_round(engine, 'lambda (driver rows)'):.1f}x, lambda (typed) / engine "
          f"{1 / per_round(engine, 'lambda (typed rows)'):.1f}x (target >= {TARGET_VS_LAMBDA}x)")


def run_ingest(args: argparse.Namespace) -> None:
    """`--ingest`: what the facts index costs a sync, per size and shape."""
    results: dict[str, Any] = {}
    for shape in args.shape.split(","):
        for size in (int(s) for s in args.sizes.split(",") if s):
            results[f"{size} {shape}"] = got = ingest_cost(args.dir, size, shape, args.ingest)
            for variant, runs in got.items():
                print(f"sync {size:,} ({shape}), {variant}: customers "
                      f"{statistics.median(r['customers'] for r in runs):.1f} s, events "
                      f"{statistics.median(r['events'] for r in runs):.1f} s "
                      f"(samples: {[{k: round(v, 1) for k, v in r.items()} for r in runs]})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--shape", default="few", help="few, many, or both: few,many")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cold", type=int, default=0, metavar="ROUNDS")
    parser.add_argument("--pg", metavar="URL", help="PostgreSQL instead of SQLite")
    parser.add_argument("--vacuum-full", action="store_true",
                        help="PostgreSQL: VACUUM FULL customers first (the heap sync leaves "
                        "holds every customer's dead versions while autovacuum is off)")
    parser.add_argument("--dir", type=Path, default=OUT / "floor")
    parser.add_argument("--json", type=Path, help="also write every sample here")
    parser.add_argument("--ingest", type=int, default=0, metavar="ROUNDS",
                        help="instead: what the facts index costs a sync of these files")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-ingest", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.url, args.child)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.child_ingest:
        child_ingest(args.dir, int(args.sizes), args.shape, args.child_ingest)
        return
    if args.ingest:
        run_ingest(args)
        return
    results: dict[str, Any] = {}
    for shape in args.shape.split(","):
        for size in (int(s) for s in args.sizes.split(",") if s):
            url = (ensure_pg(args.pg, size, shape) if args.pg
                   else ensure_sqlite(args.dir, size, shape))
            if args.pg and args.vacuum_full:
                compact(url)
            label = f"{size:,} customers, {shape} events, {'PostgreSQL' if args.pg else 'SQLite'}"
            print(f"{time.strftime('%H:%M:%S', time.gmtime())} UTC {label}", file=sys.stderr)
            heap = _heap(url)
            if heap:
                print(heap, file=sys.stderr)
            result = measure(url, args.rounds)
            report(label, result)
            cold_samples = cold(url, args.cold) if args.cold else None
            if cold_samples:
                report_cold(cold_samples)
            results[label] = {**result, "cold": cold_samples}
            sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
