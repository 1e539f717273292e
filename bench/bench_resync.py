"""Benchmark a re-sync: the same events file synced a second time, every row a known event_id.

A re-sync must tell duplicates (same contents) from conflicts (other contents) for every row
(engine/sync/conflicts.py), so it measures what that comparison costs next to the first load of
the same file. Each backend runs in its own subprocess on a fresh database: customers, then the
events once (the first load), then the events again (the re-sync, timed). The ratio column is
re-sync events/s (the fastest of --repeat) over first-load events/s on the same backend in the same run, which cancels
much of a noisy machine's speed.

    python bench/bench_resync.py --customers 100000 [--repeat 3] [--pg URL] [--json]

To compare two versions of sync in the same minute, run the script against each checkout:
`PYTHONPATH=/path/to/other/checkout python bench/bench_resync.py ...` imports that `engine`.
Generated data is shared with bench_sync.py (bench/out/, gitignored).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench_sync import (  # bench/ is sys.path[0] when this runs as a script
    OUT,
    _pg_schema,
    ensure_data,
)

from engine.store.open import open_store
from engine.sync.ingest import sync_customers, sync_events


def child(url: str, data: Path, repeat: int) -> dict[str, Any]:
    """Customers, a first load of the events, then `repeat` timed re-syncs (the fastest counts).

    Every re-sync of the same file does the same work, so the fastest one is the least
    disturbed by the other jobs on the machine.
    """
    engine = open_store(url)
    sync_customers(engine, data / "customers.csv")
    result: dict[str, Any] = {}
    for phase in ("first", *["resync"] * repeat):
        started = time.perf_counter()
        report = sync_events(engine, data / "events.csv")
        seconds = time.perf_counter() - started
        if phase in result and result[phase]["seconds"] <= seconds:
            continue
        result[phase] = {"seconds": round(seconds, 2), "read": report.read,
                         "inserted": report.inserted, "duplicates": report.duplicates,
                         "conflicts": len(getattr(report, "conflicts", [])),  # none before conflicts
                         "per_second": round(report.read / seconds)}
    engine.dispose()
    result["ratio"] = round(result["resync"]["per_second"] / result["first"]["per_second"], 2)
    result["engine"] = str(Path(sys.modules["engine"].__file__ or "").parent.parent)
    return result


def _run_child(url: str, data: Path, repeat: int) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", url, str(data),
               str(repeat)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(customers: int, seed: int, pg: str | None, repeat: int) -> list[dict[str, Any]]:
    """The re-sync on SQLite (a fresh file) and, with `pg`, PostgreSQL (a fresh schema)."""
    data = ensure_data(customers, seed, "csv")
    work = OUT / f"resync-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    rows = []
    try:
        rows.append({"backend": "SQLite", **_run_child(f"sqlite:///{work / 'sync.db'}", data, repeat)})
        if pg:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            _pg_schema(pg, "create", schema)
            try:
                sep = "&" if "?" in pg else "?"
                url = f"{pg}{sep}options=-csearch_path%3D{schema}"
                rows.append({"backend": "PostgreSQL", **_run_child(url, data, repeat)})
            finally:
                _pg_schema(pg, "drop", schema)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """A table: first load and re-sync events/s per backend, and their ratio."""
    lines = ["| backend | events | first load events/s | re-sync events/s | re-sync / first |"
             " duplicates | conflicts |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        first, again = row["first"], row["resync"]
        lines.append(f"| {row['backend']} | {first['read']:,} | {first['per_second']:,} |"
                     f" {again['per_second']:,} | {row['ratio']:.2f}x | {again['duplicates']:,} |"
                     f" {again['conflicts']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pg", help="PostgreSQL URL; a scratch schema is created and dropped")
    parser.add_argument("--repeat", type=int, default=3, help="re-syncs timed; the fastest counts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), int(args.child[2]))))
        return
    rows = measure(args.customers, args.seed, args.pg, args.repeat)
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))


if __name__ == "__main__":
    main()
