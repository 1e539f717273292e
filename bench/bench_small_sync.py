"""Small loads: a first sync into a fresh SQLite store with its indexes kept (what sync does
below engine/sync/bulk.py's BULK_ROWS) against dropped and rebuilt (what it does for a bulk
load), interleaved in one process, CPU time per sync (median of the rounds after the first);
the last column says which of the two sync's own rule picks at that size.

Where the two cross sets BULK_ROWS: a `retain test` history of a few rows must not pay for
dropping and building every index, a file of thousands of rows must not pay for keeping them.

    python bench/bench_small_sync.py                       # 30, 300, 1,000, 3,000 customers
    python bench/bench_small_sync.py --sizes 100,2000 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from bench_sync import ensure_data  # bench/ is sys.path[0] when this runs as a script

import engine.sync.batches as batches_module
import engine.sync.ingest as ingest_module
from engine.store.open import open_store
from engine.sync.bulk import is_bulk
from engine.sync.ingest import CUSTOMER_BATCH, EVENT_BATCH, sync_customers, sync_events


def _rule(dropped: bool | None) -> None:
    """Every load a bulk one (True), none (False), or sync's own rule (None)."""
    rule = is_bulk if dropped is None else (lambda batch: dropped)
    ingest_module.is_bulk = batches_module.is_bulk = rule  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30,300,1000,3000", help="customers, comma-separated")
    parser.add_argument("--shape", default="few", choices=("few", "many"))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    folders = {size: ensure_data(size, 1, "csv", args.shape) for size in sizes}
    times: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        made = 0
        for round_ in range(args.rounds + 1):  # round 0 warms up: not counted
            for size in sizes:
                for dropped in (False, True):
                    _rule(dropped)
                    made += 1
                    engine = open_store(f"sqlite:///{folder}/s{made}.db")
                    start = time.process_time()
                    sync_customers(engine, folders[size] / "customers.csv")
                    middle = time.process_time()
                    sync_events(engine, folders[size] / "events.csv")
                    end = time.process_time()
                    engine.dispose()
                    if round_:
                        times.setdefault((size, dropped), []).append(
                            ((middle - start) * 1000, (end - middle) * 1000))
    _rule(None)
    print(f"| customers ({args.shape}) | events | customers sync CPU ms: kept / dropped "
          "| events sync CPU ms: kept / dropped | sync's rule |")
    print("|---:|---:|---:|---:|---|")
    for size in sizes:
        events = sum(1 for _ in (folders[size] / "events.csv").open()) - 1
        kept, dropped = ([statistics.median(t[part] for t in times[(size, d)]) for part in (0, 1)]
                         for d in (False, True))
        picks = "/".join("dropped" if is_bulk(range(min(rows, batch))) else "kept"
                         for rows, batch in ((size, CUSTOMER_BATCH), (events, EVENT_BATCH)))
        print(f"| {size:,} | {events:,} | {kept[0]:.1f} / {dropped[0]:.1f} "
              f"| {kept[1]:.1f} / {dropped[1]:.1f} | {picks} |")
    print(f"\nrepeat: python bench/bench_small_sync.py --sizes {args.sizes} --shape {args.shape} "
          f"--rounds {args.rounds}")


if __name__ == "__main__":
    main()
