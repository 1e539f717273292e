"""A/B of sync_events with and without the pyarrow fast path (engine/sync/arrow.py).

Usage: python bench/ab_syncarrow.py [DATA_DIR] [ROUNDS]   (DATA_DIR: customers.csv + events.csv)
Each run: a fresh SQLite file, sync_customers then sync_events timed; old and new alternate.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import engine.sync.arrow
from engine.store.open import open_store
from engine.sync.ingest import sync_customers, sync_events


def run(data: Path, fast: bool) -> float:
    engine.sync.arrow.MIN_BYTES = 8 * 1024 * 1024 if fast else 1 << 62
    with tempfile.TemporaryDirectory() as folder:
        db = open_store(f"sqlite:///{folder}/bench.db")
        sync_customers(db, data / "customers.csv")
        start = time.perf_counter()
        report = sync_events(db, data / "events.csv")
        seconds = time.perf_counter() - start
        db.dispose()
    return report.read / seconds


def main() -> None:
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/out/data-100000-s1-csv")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    for _ in range(rounds):
        for fast in (False, True):
            print(f"{'pyarrow' if fast else 'per-row'}: {run(data, fast):,.0f} events/s", flush=True)


if __name__ == "__main__":
    main()
