"""Benchmark the live run's commit against a bare set-based INSERT ... SELECT of the same rows.

The issue's target: a run that enrolls about 150,000 customers of a 1,000,000 base into a
two-action playbook (a task and points) commits, beyond process start-up, within 2x of a bare
`INSERT ... SELECT` of the same enrollment and action rows into tables with the same unique keys,
measured in the same run; memory flat in N; a second run at once commits nothing, in under half
that baseline.

Per database (SQLite file, PostgreSQL schema) and size, in ONE process:

- the base: N customers written by one `INSERT ... SELECT` from a generated series, 15% of them
  inactive for 40-100 days (the playbook's `inactive: {days: 30}` picks them), the rest active
  within the last 20 days; statistics taken (ANALYZE), as after a sync;
- **baseline**: the same enrollments (`INSERT INTO enrollments SELECT ... FROM customers WHERE
  last_active_at <= as_of - 30d`) and their two actions each (`INSERT INTO actions SELECT ...
  FROM enrollments`, the idempotency key built in SQL) and their payloads (`INSERT INTO
  action_payloads SELECT ... FROM actions`), into copies of the tables with the same unique keys
  and indexes (`bare_enrollments`, `bare_actions`, `bare_action_payloads`), in one transaction;
- **run**: `engine.outbox.run.run_cycle(..., dispatch=False)` (evaluate, plan, commit; `--path
  sql`: the database plans and writes every row in one transaction of INSERT ... SELECT,
  `--path jinja`: a title with a filter, so every enrollment is planned in Python, its title
  rendered by Jinja, and committed in batches), the same count of rows checked;
- **again**: the same run at once, which must commit nothing;
- `--repeat N`: all three again on emptied tables, N times, each time the best of N (the
  machine is shared: single runs vary by +-25%); `run CPU s` is this process's CPU time during
  the run (on SQLite nearly all of the run; on PostgreSQL the rest is the server's work);
- memory: tracemalloc's peak during the same run repeated on emptied tables (Python
  allocations: what grows with N if something holds every row; tracemalloc slows Python, so
  never during a timed run).

    python bench/bench_commit.py [--customers 1000000] [--db sqlite|postgresql|both] [--repeat 3]
                                 [--path sql jinja]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.config import Settings
from engine.format.validation import load_valid_playbooks
from engine.outbox.run import run_cycle
from engine.plan.build import make_plan
from engine.store.open import open_store

AS_OF = datetime(2025, 1, 1, tzinfo=UTC)
PLAYBOOK = """id: bench-winback
name: Bench winback
trigger:
  inactive: { days: 30 }
actions:
  - task: { title: "Call {{ customer.name TITLE}}", assignee: retention, due_in: 2d }
  - points: { amount: 200, reason: winback bonus }
"""
TITLES = {"sql": "", "jinja": "| title "}
"""The title `Call {{ customer.name }}` lets the database plan the playbook (the commit is
INSERT ... SELECT, engine/outbox/set_commit.py); with a filter it is rendered by Jinja for each
customer (the per-customer commit, what an email or a webhook always takes)."""
SETTINGS = Settings()
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def base(engine: sa.Engine, n: int) -> None:
    """N customers, 15% inactive 40-100 days before AS_OF, by one INSERT ... SELECT."""
    as_of = AS_OF.replace(tzinfo=None)
    with engine.begin() as c:
        if engine.dialect.name == "sqlite":
            series = ("WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s "
                      f"WHERE i < {n}) ")
            last = ("datetime(:as_of, CASE WHEN i % 20 < 3 THEN '-' || (40 + i % 60) || ' days'"
                    " ELSE '-' || (i % 20) || ' days' END)")
            source = "FROM s"
        else:
            series = ""
            last = ("CAST(:as_of AS timestamptz) - (CASE WHEN i % 20 < 3 THEN 40 + i % 60 "
                    "ELSE i % 20 END) * interval '1 day'")
            source = f"FROM generate_series(1, {n}) AS s(i)"
        c.execute(sa.text(
            f"{series}INSERT INTO customers (customer_id, email, name, created_at, tags, "
            "file_tags, tags_added, tags_removed, attributes, purchase_count, total_spent, "
            "points_balance, last_active_at) "
            f"SELECT 'c' || i, 'c' || i || '@example.com', 'Customer ' || i, :start, '[]', "
            f"'[]', '[]', '[]', '{{}}', 0, 0, 0, {last} {source}"),
            {"as_of": as_of, "start": datetime(2020, 1, 1, tzinfo=UTC).replace(tzinfo=None)})
        c.execute(sa.text("ANALYZE"))
        for name in ("enrollments", "actions", "action_payloads"):
            bare = f"bare_{name}"
            if engine.dialect.name == "sqlite":
                ddl = c.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = :n"),
                                {"n": name}).scalar_one()
                ddl = ddl.replace(f"TABLE \"{name}\"", f"TABLE {name}", 1).replace(
                    f"TABLE {name}", f"TABLE {bare}", 1)
                for parent in ("enrollments", "actions"):
                    ddl = ddl.replace(f"REFERENCES {parent} ", f"REFERENCES bare_{parent} ")
                c.execute(sa.text(ddl))
            else:
                c.execute(sa.text(f"CREATE TABLE {bare} (LIKE {name} INCLUDING ALL)"))
        if engine.dialect.name == "postgresql":  # LIKE copies no foreign key: the same ones
            # (SQLite's copied DDL keeps them), a parent among the three its bare copy
            for table, definition in c.execute(sa.text(
                    "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
                    " WHERE contype = 'f' AND conrelid::regclass::text IN ('enrollments', "
                    "'actions', 'action_payloads')")).all():
                for parent in ("enrollments", "actions"):
                    definition = definition.replace(f"REFERENCES {parent}(",
                                                    f"REFERENCES bare_{parent}(")
                c.execute(sa.text(f"ALTER TABLE bare_{table} ADD {definition}"))
        if engine.dialect.name == "sqlite":  # the unique keys are in the DDL; the indexes too,
            # as PostgreSQL's LIKE ... INCLUDING ALL copies them: the same tables, bare inserts
            for name, table, ddl in c.execute(sa.text(
                    "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND "
                    "sql IS NOT NULL AND tbl_name IN ('enrollments', 'actions', "
                    "'action_payloads')")).all():
                c.execute(sa.text(ddl.replace(f"INDEX {name} ON {table}",
                                              f"INDEX bare_{name} ON bare_{table}")))


def baseline(engine: sa.Engine) -> tuple[float, int]:
    """The same rows by hand: two INSERT ... SELECT in one transaction; seconds and rows."""
    cutoff = (AS_OF - timedelta(days=30)).replace(tzinfo=None)
    as_of = AS_OF.replace(tzinfo=None)
    started = time.perf_counter()
    with engine.begin() as c:
        c.execute(sa.text(
            "INSERT INTO bare_enrollments (playbook_id, version, customer_id, occurrence_key, "
            "step, holdout, status, entered_at) SELECT 'bench-winback', 'v', customer_id, "
            "'x' || customer_id, 0, false, 'completed', :as_of FROM customers "
            "WHERE last_active_at <= :cutoff"), {"as_of": as_of, "cutoff": cutoff})
        inserted = 0
        for step, kind, payload in ((0, "task", '{"title": "Call"}'),
                                    (1, "points", '{"amount": 200}')):
            inserted += c.execute(sa.text(
                "INSERT INTO bare_actions (playbook_id, enrollment_id, customer_id, stage, step,"
                " connector, idempotency_key, status, attempts, next_attempt_at, "
                f"created_at) SELECT playbook_id, id, customer_id, 0, {step}, '{kind}', "
                f"playbook_id || '/' || customer_id || '/0.{step}/' || "
                "occurrence_key, 'planned', 0, :as_of, :as_of FROM bare_enrollments"),
                {"as_of": as_of}).rowcount
            c.execute(sa.text(
                f"INSERT INTO bare_action_payloads (action_id, payload) SELECT id, '{payload}' "
                f"FROM bare_actions WHERE step = {step}"))
    return time.perf_counter() - started, inserted


def measure(url: str, n: int, folder: Path, repeat: int = 1,
            path: str = "sql") -> dict[str, Any]:
    engine = open_store(url)
    started = time.perf_counter()
    base(engine, n)
    built = time.perf_counter() - started
    file = folder / "bench-winback.yaml"
    file.write_text(PLAYBOOK.replace("TITLE", TITLES[path]))
    playbooks = load_valid_playbooks([file])
    with engine.connect() as connection:  # imports and first compilations, untimed
        make_plan(connection, playbooks, AS_OF, show=1, complete=False)
    best: dict[str, float] = {}
    for attempt in range(repeat):  # the best of `repeat`: the machine is shared and noisy
        if attempt:
            empty(engine, "bare_action_payloads", "bare_actions", "bare_enrollments",
                  "action_payloads", "actions", "enrollments")
        bare_s, bare_rows = baseline(engine)
        started, cpu = time.perf_counter(), time.process_time()
        report = run_cycle(engine, playbooks, AS_OF, SETTINGS, dispatch=False)
        run_s, run_cpu = time.perf_counter() - started, time.process_time() - cpu
        line = report.playbooks["bench-winback"]
        committed = sum(line.committed.values())
        assert committed == bare_rows, (committed, bare_rows)
        started = time.perf_counter()
        again = run_cycle(engine, playbooks, AS_OF, SETTINGS, dispatch=False)
        again_s = time.perf_counter() - started
        assert sum(again.playbooks["bench-winback"].committed.values()) == 0
        for name, value in (("bare_s", bare_s), ("run_s", run_s), ("run_cpu", run_cpu),
                            ("again_s", again_s)):
            best[name] = min(best.get(name, value), value)
    empty(engine, "action_payloads", "actions", "enrollments")  # again, for its memory alone
    tracemalloc.start()  # slows Python down: never around a timed run
    run_cycle(engine, playbooks, AS_OF, SETTINGS, dispatch=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    engine.dispose()
    return {"db": engine.dialect.name, "customers": n, "entered": line.entered,
            "actions": committed, "base_s": built, **best, "peak_mb": peak / 1e6}


def empty(engine: sa.Engine, *tables: str) -> None:
    """Delete every row of `tables` (in this order: actions before their enrollments)."""
    with engine.begin() as c:
        for table in tables:
            c.execute(sa.text(f"DELETE FROM {table}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure N times on emptied tables and keep each best time")
    parser.add_argument("--path", nargs="+", choices=sorted(TITLES), default=["sql"],
                        help="the task title the database renders (sql), or Jinja (jinja)")
    args = parser.parse_args()
    print("| path | db | customers | entered | actions | bare INSERT...SELECT s | run s "
          "| run CPU s | ratio | again s | again/bare | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, path in ((n, path) for n in args.customers for path in args.path):
        for db in (["sqlite", "postgresql"] if args.db == "both" else [args.db]):
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                schema = None
                if db == "sqlite":
                    url = f"sqlite:///{folder / 'bench.db'}"
                else:
                    schema = f"bench_{uuid.uuid4().hex[:8]}"
                    admin = sa.create_engine(PG)
                    with admin.begin() as c:
                        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
                    url = f"{PG}?options=-csearch_path%3D{schema}"
                try:
                    r = measure(url, n, folder, args.repeat, path)
                finally:
                    if schema is not None:
                        with admin.begin() as c:
                            c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
                        admin.dispose()
            print(f"| {path} | {r['db']} | {n:,} | {r['entered']:,} | {r['actions']:,} | "
                  f"{r['bare_s']:.2f} | {r['run_s']:.2f} | {r['run_cpu']:.2f} | "
                  f"{r['run_s'] / r['bare_s']:.1f}x | "
                  f"{r['again_s']:.2f} | {r['again_s'] / r['bare_s']:.2f} | "
                  f"{r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
