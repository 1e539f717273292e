"""Benchmark the plan: counting in SQL vs holdout over streamed keys, and `retain dry-run` memory.

Per sample playbook on a bench database (bench/bench_eval.py builds `bench/out/eval-<N>.db`):
the entering COUNT(*), the holdout count (every (customer, occurrence) key streamed through the
hash), and planning every enrollment (`PlaybookPlan.batches`). Then `retain dry-run --json` and
the text dry-run of all samples as separate processes: wall time and peak RSS. `--old DIR` runs
the same commands against another source tree (e.g. `git archive <commit> | tar -x -C DIR`) in
turn with this one, so both are measured in the same minute.

    python bench/bench_plan.py bench/out/eval-100000.db [--old /tmp/old] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.format.validation import load_valid_playbooks
from engine.plan import reader
from engine.plan.build import make_plan
from engine.plan.set_plan import holdout_sql
from engine.query.evaluate import compose, count, prepare
from engine.store.open import make_engine
from playbooks import SAMPLES_DIR

ROOT = Path(__file__).resolve().parent.parent
AS_OF = datetime(2025, 1, 1, tzinfo=UTC)  # bench/gen_data.py's END


def in_process(db: Path) -> None:
    """Per playbook: COUNT(*) s, holdout counted in SQL s, the candidates streamed as the database
    scans them and in the plan's (customer_id, occurrence) order, every enrollment planned s."""
    playbooks = load_valid_playbooks([SAMPLES_DIR])
    engine = make_engine(f"sqlite:///{db}")
    print("| playbook | entering | COUNT(*) s | holdout | holdout SQL s | rows s | ordered s "
          "| plan all s |")
    print("|---|---|---|---|---|---|---|---|")
    with engine.connect() as connection:
        moment = prepare(connection, AS_OF, playbooks)
        for pb in playbooks:
            tc = moment.trigger_context(pb.id)
            query = compose(pb, tc, pb.trigger.sql(tc, pb.document.backfill))
            started = time.perf_counter()
            entering = count(connection, query)
            counted = time.perf_counter() - started
            started = time.perf_counter()
            entering_rows = query.subquery()
            held = connection.execute(sa.select(sa.func.count()).select_from(entering_rows).where(
                holdout_sql(pb, entering_rows.c.customer_id, entering_rows.c.occurrence))
            ).scalar_one()
            hashed = time.perf_counter() - started
            unordered = _stream_seconds(connection, query, entering, ordered=False)
            ordered = _stream_seconds(connection, query, entering, ordered=True)
            (part,) = make_plan(connection, [pb], AS_OF, show=0, complete=False).playbooks
            started = time.perf_counter()
            planned = sum(len(batch) for batch in part.batches())
            assert planned == (0 if part.over_limit else entering)
            seconds = "over limit" if part.over_limit else f"{time.perf_counter() - started:.2f}"
            print(f"| {pb.id} | {entering:,} | {counted:.3f} | {held:,} | {hashed:.3f} "
                  f"| {unordered:.3f} | {ordered:.3f} | {seconds} |")


def _stream_seconds(connection: sa.Connection, query: sa.Select[Any], expected: int, *,
                    ordered: bool) -> float:
    """Seconds to stream every candidate row: as the plan does (`reader.candidate_batches`, in
    (customer_id, occurrence) order), or in whatever order the database scans them."""
    started = time.perf_counter()
    if ordered:
        rows = sum(len(batch) for batch in reader.candidate_batches(connection, query))
    else:
        result = connection.execution_options(stream_results=True,
                                              yield_per=reader.BATCH).execute(query)
        rows = sum(len(batch) for batch in result.partitions())
    assert rows == expected
    return time.perf_counter() - started


def process(tree: Path, db: Path, as_json: bool) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `retain dry-run` of the samples from `tree`."""
    code = "import sys; from cli.main import main; sys.argv[0] = 'retain'; main()"
    args = [sys.executable, "-c", code, "--db", f"sqlite:///{db}", "dry-run",
            str(tree / "playbooks"), "--as-of", AS_OF.date().isoformat(),
            *(["--json"] if as_json else [])]
    started = time.perf_counter()
    with subprocess.Popen(args, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                          stdout=subprocess.DEVNULL) as child:
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = status
    if status != 0:
        raise SystemExit(f"dry-run from {tree} failed ({status})")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def processes(db: Path, old: Path | None, rounds: int) -> None:
    """Median wall time and max peak RSS per tree and mode, rounds interleaved."""
    trees = {"new": ROOT, **({"old": old} if old else {})}
    found: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for name, tree in trees.items():
            for as_json in (True, False):
                found.setdefault((name, as_json), []).append(process(tree, db, as_json))
    print("\n| code | command | median s | peak RSS MB |\n|---|---|---|---|")
    for (name, as_json), runs in found.items():
        print(f"| {name} | dry-run{' --json' if as_json else ''} "
              f"| {statistics.median(s for s, _ in runs):.2f} | {max(m for _, m in runs):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--old", type=Path, help="another source tree to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    options.db = options.db.resolve()  # the child processes run in their own tree
    in_process(options.db)
    processes(options.db, options.old, options.rounds)


if __name__ == "__main__":
    main()
