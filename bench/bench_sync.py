"""Benchmark `retain sync` (engine.sync.ingest) against plain sqlite3 inserts of the same rows.

Targets (issue 14): >= 100,000 customers/s; >= 100,000 events/s on the `many` shape (~8.5 events
per customer) and >= 75,000 on the `few` shape (0-6, ~2.25); peak memory < 500 MB while syncing
1,000,000 customers; end to end, fact refresh and RFM included. Every measurement runs in a fresh subprocess on a fresh database, so
its `ru_maxrss` is its own peak and no cache carries over. The raw-SQLite baseline inserts the
same event tuples (parsed before the clock starts, no validation, into Retain's own `events`
table with its indexes and the same PRAGMAs) with `executemany`; dividing by it cancels much of
the machine's speed, so runs on different (or noisy, shared) machines compare by the ratio.

    python bench/bench_sync.py --sizes 100000,1000000 --shape few,many [--format jsonl] [--pg URL]
    python bench/bench_sync.py --sizes 100000 --shape few --cli   # also `retain sync` processes
    python bench/bench_sync.py --sizes 100000 --profile      # cProfile of the sync, top 30
    python bench/bench_sync.py --sizes "" --real ../shared/data  # the three real datasets

Generated data is cached in bench/out/ (gitignored) per size, seed and format.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from gen_data import generate  # bench/ is sys.path[0] when this runs as a script

from engine.store.open import normalize_url, open_store
from engine.sync.datasets import DATASETS, dataset_rows
from engine.sync.ingest import ingest_customers, ingest_events, sync_customers, sync_events

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CHUNK = 50_000
TARGET_EVENTS_PER_S = {"many": 100_000, "few": 75_000}
TARGET_CUSTOMERS_PER_S = 100_000
TARGET_PEAK_MB = 500


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def ensure_data(customers: int, seed: int, fmt: str, shape: str = "many") -> Path:
    """Generated files for this size and shape, made once; a `meta.json` marks a complete
    generation. The `many` shape keeps its old folder name (results cached before shapes)."""
    folder = OUT / f"data-{customers}-s{seed}-{fmt}{'' if shape == 'many' else '-' + shape}"
    if not (folder / "meta.json").is_file():
        started = time.perf_counter()
        meta = generate(customers, folder, seed, fmt, shape)
        meta["seconds"] = round(time.perf_counter() - started, 1)
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return folder


# --- child measurements (each in its own process) ------------------------------------------


def child_sync(url: str, data: Path, fmt: str, profile: Path | None) -> dict[str, Any]:
    """Time sync_customers then sync_events on a fresh, migrated database."""
    engine = open_store(url)  # migrations are set-up, not sync: outside the clock
    result: dict[str, Any] = {}
    profiler = None
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    for kind, function in (("customers", sync_customers), ("events", sync_events)):
        started = time.perf_counter()
        report = function(engine, data / f"{kind}.{fmt}")
        result[kind] = {"seconds": time.perf_counter() - started, "read": report.read,
                        "inserted": report.inserted, "updated": report.updated,
                        "duplicates": report.duplicates, "rejected": len(report.rejected)}
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    engine.dispose()
    result["peak_mb"] = _peak_mb()
    return result


def _event_tuples(path: Path, fmt: str) -> Iterator[list[tuple[Any, ...]]]:
    """Chunks of rows for Retain's `events` table, parsed the simplest way that is still right."""
    def row(r: dict[str, Any], properties: dict[str, Any]) -> tuple[Any, ...]:
        when = datetime.fromisoformat(r["occurred_at"]).strftime("%Y-%m-%d %H:%M:%S.%f")
        amount, score = properties.get("amount"), properties.get("score")
        return (r["event_id"], r["customer_id"], r["type"], when,
                None if amount is None else float(amount), None if score is None else float(score),
                json.dumps(properties))

    chunk: list[tuple[Any, ...]] = []
    with path.open(encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            for r in csv.DictReader(handle):
                extra = {k: v for k, v in r.items()
                         if k not in ("event_id", "customer_id", "type", "occurred_at") and v != ""}
                chunk.append(row(r, extra))
                if len(chunk) == CHUNK:
                    yield chunk
                    chunk = []
        else:
            for line in handle:
                r = json.loads(line)
                chunk.append(row(r, r.get("properties", {})))
                if len(chunk) == CHUNK:
                    yield chunk
                    chunk = []
    if chunk:
        yield chunk


CUSTOMER_SQL = ("INSERT INTO customers (customer_id, email, name, created_at, birthday, timezone,"
                " country, segment, tags, file_tags, attributes, first_synced_at, last_active_at,"
                " purchase_count, total_spent, points_balance)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0.0, 0)")


def _customer_tuples(path: Path, fmt: str) -> list[tuple[Any, ...]]:
    """Every customer as the row Retain stores, parsed the simplest way that is still right."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    def row(r: dict[str, Any]) -> tuple[Any, ...]:
        created = (datetime.fromisoformat(r["created_at"]).strftime("%Y-%m-%d %H:%M:%S.%f")
                   if r.get("created_at") else now)
        tags = json.dumps([t.strip() for t in (r.get("tags") or "").split(",") if t.strip()])
        extra = {k: v for k, v in r.items() if k not in CUSTOMER_FIELDS and v}
        return (r["customer_id"], r.get("email") or None, r.get("name") or None, created,
                r.get("birthday") or None, r.get("timezone") or None, r.get("country") or None,
                r.get("segment") or None, tags, tags, json.dumps(extra), now, created)

    with path.open(encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            return [row(r) for r in csv.DictReader(handle)]
        return [row(json.loads(line)) for line in handle]


CUSTOMER_FIELDS = ("customer_id", "email", "name", "created_at", "birthday", "timezone",
                   "country", "segment", "tags")


def child_baseline(db_file: Path, data: Path, fmt: str) -> dict[str, Any]:
    """Plain sqlite3 executemany of pre-parsed tuples (whole customer rows, then events): the
    floor any sync is measured against."""
    open_store(f"sqlite:///{db_file}").dispose()  # Retain's schema, indexes included
    connection = sqlite3.connect(db_file)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        connection.execute(f"PRAGMA {pragma}")
    rows = _customer_tuples(data / f"customers.{fmt}", fmt)
    started = time.perf_counter()
    for start in range(0, len(rows), CHUNK):
        connection.executemany(CUSTOMER_SQL, rows[start:start + CHUNK])
        connection.commit()
    customers_s = time.perf_counter() - started
    customers = len(rows)
    del rows
    events, events_s = 0, 0.0
    sql = ("INSERT INTO events (event_id, customer_id, type, occurred_at, amount, score, properties)"
           " VALUES (?, ?, ?, ?, ?, ?, ?)")
    for chunk in _event_tuples(data / f"events.{fmt}", fmt):
        started = time.perf_counter()
        connection.executemany(sql, chunk)
        connection.commit()
        events_s += time.perf_counter() - started
        events += len(chunk)
    connection.close()
    return {"customers": {"seconds": customers_s, "read": customers},
            "events": {"seconds": events_s, "read": events},
            "peak_mb": _peak_mb()}


def child_real(db_file: Path, folder: Path) -> dict[str, Any]:
    """Map and ingest the real datasets into one database, as a two-year demo history would."""
    engine = open_store(f"sqlite:///{db_file}")
    results = []
    for name, prefix in (("online_retail_ii", ""), ("online_retail", ""), ("cdnow", "cd-")):
        started = time.perf_counter()
        customers, events = dataset_rows(name, folder / DATASETS[name], prefix=prefix)
        mapped = time.perf_counter()
        ingest_customers(engine, customers, name)
        report = ingest_events(engine, events, name)
        results.append({"dataset": name, "customers": len(customers), "events": len(events),
                        "inserted": report.inserted, "duplicates": report.duplicates,
                        "map_s": mapped - started, "ingest_s": time.perf_counter() - mapped})
    engine.dispose()
    return {"datasets": results, "peak_mb": _peak_mb()}


def markdown_real(result: dict[str, Any]) -> str:
    """The real-dataset loads as a markdown table."""
    lines = ["| dataset | customers | events | new | duplicates | map s | ingest s | events/s |",
             "|" + "---|" * 8]
    for r in result["datasets"]:
        lines.append(f"| {r['dataset']} | {r['customers']:,} | {r['events']:,} | {r['inserted']:,}"
                     f" | {r['duplicates']:,} | {r['map_s']:.1f} | {r['ingest_s']:.1f} | "
                     f"{r['events'] / r['ingest_s']:,.0f} |")
    return "\n".join(lines) + f"\n\npeak memory {result['peak_mb']:.0f} MB"


# --- orchestration -------------------------------------------------------------------------


def _run_child(args: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pg_schema(pg_url: str, action: str, schema: str) -> None:
    admin = sa.create_engine(normalize_url(pg_url))
    with admin.begin() as connection:
        connection.exec_driver_sql(f"{action} schema {schema}{' cascade' if action == 'drop' else ''}")
    admin.dispose()


def child_cli(url: str, data: Path, fmt: str) -> dict[str, Any]:
    """`retain sync customers` then `retain sync events` as processes, as a user runs them:
    wall time from spawn to exit (start-up and output included), each one's peak memory."""
    retain = [sys.executable, "-c", "from cli.main import main; main()", "--db", url]
    subprocess.run([*retain, "migrate"], check=True, capture_output=True)
    result: dict[str, Any] = {}
    for kind in ("customers", "events"):
        started = time.perf_counter()
        done = subprocess.run([*retain, "sync", kind, str(data / f"{kind}.{fmt}")],
                              capture_output=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"retain sync {kind} failed:\n{done.stderr.decode()[-2000:]}")
        with (data / f"{kind}.{fmt}").open("rb") as handle:
            read = sum(1 for _ in handle) - (fmt == "csv")
        result[kind] = {"seconds": seconds, "read": read}
    # the largest child's peak (the event sync's: it also refreshes facts and RFM)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


def measure(customers: int, seed: int, fmt: str, pg: str | None, profile: bool,
            shape: str = "many", cli: bool = False) -> list[dict[str, Any]]:
    """All measurements for one size and shape: Retain on SQLite, raw sqlite3, Retain on
    PostgreSQL, `retain sync` processes."""
    data = ensure_data(customers, seed, fmt, shape)
    work = OUT / f"run-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    rows = []
    try:
        prof = work / "sync.prof"
        sync = _run_child(["sync", f"sqlite:///{work / 'sync.db'}", str(data), fmt,
                           str(prof) if profile else ""])
        rows.append({"backend": "retain sync -> SQLite", **sync})
        if profile:
            import pstats

            pstats.Stats(str(prof), stream=sys.stderr).sort_stats("cumulative").print_stats(30)
        rows.append({"backend": "raw sqlite3 executemany",
                     **_run_child(["baseline", str(work / "raw.db"), str(data), fmt])})
        if pg:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            _pg_schema(pg, "create", schema)
            try:
                sep = "&" if "?" in pg else "?"
                url = f"{pg}{sep}options=-csearch_path%3D{schema}"
                rows.append({"backend": "retain sync -> PostgreSQL",
                             **_run_child(["sync", url, str(data), fmt, ""])})
            finally:
                _pg_schema(pg, "drop", schema)
        if cli:
            rows.append({"backend": "retain sync CLI -> SQLite",
                         **_run_child(["cli", f"sqlite:///{work / 'cli.db'}", str(data), fmt])})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw = rows[1]
    for row in rows:
        row["size"] = customers
        row["format"] = fmt
        row["shape"] = shape
        for kind in ("customers", "events"):
            part = row[kind]
            part["per_second"] = part["read"] / part["seconds"] if part["seconds"] else None
            part["vs_raw"] = part["per_second"] / (raw[kind]["read"] / raw[kind]["seconds"])
        row["events_vs_raw"] = row["events"]["vs_raw"]
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table, one line per (size, backend)."""
    lines = ["| customers | shape | events | backend | customers s | customers/s | vs raw "
             "| events s | events/s | vs raw | peak MB |", "|" + "---|" * 11]
    for r in rows:
        c, e = r["customers"], r["events"]
        lines.append(f"| {r['size']:,} | {r.get('shape', 'many')} | {e['read']:,} | {r['backend']}"
                     f" | {c['seconds']:.1f} | {c['per_second']:,.0f} | {c['vs_raw']:.2f}x"
                     f" | {e['seconds']:.1f} | {e['per_second']:,.0f} | {e['vs_raw']:.2f}x"
                     f" | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """One line per target: met or not, with the number that decides it."""
    out = []
    for r in rows:
        if not r["backend"].startswith("retain sync"):
            continue
        shape = r.get("shape", "many")
        rate, peak, goal = r["events"]["per_second"], r["peak_mb"], TARGET_EVENTS_PER_S[shape]
        crate = r["customers"]["per_second"]
        out.append(f"{r['size']:,} customers, {shape}, {r['backend']}: {crate:,.0f} customers/s "
                   f"({'meets' if crate >= TARGET_CUSTOMERS_PER_S else 'MISSES'} >= 100,000); "
                   f"{rate:,.0f} events/s ({'meets' if rate >= goal else 'MISSES'} >= {goal:,}); "
                   f"peak {peak:.0f} MB ({'meets' if peak < TARGET_PEAK_MB else 'MISSES'} < 500 MB)")
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry: measure every size and print a markdown table (or JSON with --json)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, *rest = argv[1:]
        if kind == "sync":
            result = child_sync(rest[0], Path(rest[1]), rest[2], Path(rest[3]) if rest[3] else None)
        elif kind == "real":
            result = child_real(Path(rest[0]), Path(rest[1]))
        elif kind == "cli":
            result = child_cli(rest[0], Path(rest[1]), rest[2])
        else:
            result = child_baseline(Path(rest[0]), Path(rest[1]), rest[2])
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000",
                        help="comma-separated customer counts (default 100000,1000000)")
    parser.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shape", default="many",
                        help="comma-separated data shapes: many (~8.5 events per customer), few"
                        " (0-6, ~2.25); default many")
    parser.add_argument("--cli", action="store_true",
                        help="also time `retain sync` processes (start-up and output included)")
    parser.add_argument("--pg", metavar="URL", help="also sync into PostgreSQL (a fresh schema)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--profile", action="store_true", help="cProfile the SQLite sync (stderr)")
    parser.add_argument("--real", metavar="DIR", type=Path,
                        help="also load the real datasets of DIR (shared/data) into SQLite")
    args = parser.parse_args(argv)
    rows = []
    for size in (int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()):
        for shape in args.shape.split(","):
            rows.extend(measure(size, args.seed, args.format, args.pg, args.profile, shape,
                                args.cli))
            print(f"done {size:,} customers, {shape}", file=sys.stderr)
    real = None
    if args.real:
        work = OUT / f"run-{uuid.uuid4().hex[:8]}"
        work.mkdir(parents=True)
        try:
            real = _run_child(["real", str(work / "real.db"), str(args.real.resolve())])
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "python": sys.version.split()[0],
                          "results": rows, "verdict": verdict(rows), "real": real}, indent=2))
        return
    if rows:
        print(markdown(rows) + "\n\n" + "\n".join(verdict(rows)))
    if real:
        print(markdown_real(real))


if __name__ == "__main__":
    main()
