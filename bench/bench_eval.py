"""Benchmark evaluation (the dry-run) against hand-written SQL and a per-record loop.

placeholder
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench_sync import OUT, ensure_data  # bench/ is sys.path[0] when this runs as a script
from gen_data import END

from engine.store import open_store
from engine.sync import sync_customers, sync_events


def ensure_db(customers: int, seed: int) -> Path:
    """`bench/out/eval-<N>.db`, synced once from the generated files and then reused.

    Built under a temporary name and renamed at the end, so an interrupted build is never
    mistaken for a finished one. `now` is the generator's end, so `first_synced_at` (and the
    database) is the same on every build.
    """
    target = OUT / f"eval-{customers}.db"
    if target.is_file():
        return target
    data = ensure_data(customers, seed, "csv")
    building = OUT / f"eval-{customers}.building.db"
    for leftover in (building, *(Path(f"{building}{tail}") for tail in ("-wal", "-shm"))):
        leftover.unlink(missing_ok=True)
    started = time.perf_counter()
    engine = open_store(f"sqlite:///{building}")
    sync_customers(engine, data / "customers.csv", now=END)
    sync_events(engine, data / "events.csv")
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    building.rename(target)
    print(f"built {target.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return target


if __name__ == "__main__":
    print(json.dumps(str(ensure_db(int(sys.argv[1]), 1))))
