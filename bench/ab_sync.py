"""Sync speed of two versions of Retain, interleaved with the raw sqlite3 baseline (issue 14).

On a shared, noisy machine one run of each says little; this alternates, round after round, the
raw baseline, the `--before` checkout's sync and this checkout's sync, each a fresh subprocess on
a fresh SQLite file (bench_sync.py's children), and prints every round and the medians, with
each version's rate as a ratio to the baseline of its own round.

    python bench/ab_sync.py --before /path/to/main --size 100000 --shape few --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from bench_sync import OUT, ensure_data  # bench/ is sys.path[0] when this runs as a script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _child(code: Path, args: list[str]) -> dict[str, Any]:
    """bench_sync.py's child with `code` first on the import path (its engine is measured)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    command = [sys.executable, str(HERE / "bench_sync.py"), "--child", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rates(result: dict[str, Any]) -> dict[str, float]:
    return {kind: result[kind]["read"] / result[kind]["seconds"] for kind in ("customers", "events")}


def main() -> None:
    """Alternate raw, before and after for `--rounds` rounds; print rounds and medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout to compare with")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--shape", default="few", choices=["few", "many"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = ensure_data(args.size, 1, "csv", args.shape)
    work = OUT / f"ab-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    rows: dict[str, list[dict[str, float]]] = {"raw": [], "before": [], "after": []}
    try:
        for number in range(args.rounds):
            for name, code in (("raw", ROOT), ("before", args.before.resolve()), ("after", ROOT)):
                db = work / f"{name}-{number}.db"
                child = (["baseline", str(db), str(data), "csv"] if name == "raw"
                         else ["sync", f"sqlite:///{db}", str(data), "csv", ""])
                result = _child(code, child)
                rate = {**_rates(result), "peak_mb": result["peak_mb"],
                        "seconds": result["customers"]["seconds"] + result["events"]["seconds"]}
                rows[name].append(rate)
                for path in work.glob(f"{name}-{number}.db*"):
                    path.unlink()
            line = " | ".join(
                f"{name} {rows[name][-1]['customers']:,.0f} c/s {rows[name][-1]['events']:,.0f} e/s"
                for name in rows)
            print(f"round {number + 1}: {line}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| {args.size:,} {args.shape} | customers/s | vs raw | events/s | vs raw | peak MB |")
    print("|---|---|---|---|---|---|")
    for name in rows:
        ratio = {kind: statistics.median(r[kind] / raw[kind] for r, raw in
                                         zip(rows[name], rows["raw"], strict=True))
                 for kind in ("customers", "events")}
        median = {kind: statistics.median(r[kind] for r in rows[name])
                  for kind in ("customers", "events", "peak_mb")}
        print(f"| {name} | {median['customers']:,.0f} | {ratio['customers']:.2f}x |"
              f" {median['events']:,.0f} | {ratio['events']:.2f}x | {median['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
