"""Benchmark the plan: counting in SQL, holdout, every enrollment planned, and the whole plan as JSON.

Per playbook on a bench database (bench/bench_eval.py builds `bench/out/eval-<N>.db`; `--build`
builds one of either data shape): the entering COUNT(*), the holdout count (every (customer,
occurrence) key streamed through the hash), and planning every enrollment
(`PlaybookPlan.batches`). Then the whole plan as JSON against the text dry-run of the same
playbooks (issue 14): the `dry_run` command's own function run in this process (its output
counted and dropped), the two modes interleaved round after round (medians and the ratio), and
the same two commands as separate processes (wall time, peak RSS). `--old DIR` runs every
measurement against another source tree too (e.g. `git archive <commit> | tar -x -C DIR`), in
turn with this one, so both are measured in the same minute.

    python bench/bench_plan.py bench/out/eval-100000.db [--old /tmp/old] [--rounds 3]
    python bench/bench_plan.py --build 1000000 --shape few --out bench/out/plan  # -> plan-1000000-few.db
    python bench/bench_plan.py bench/out/plan/plan-1000000-few.db \
        --playbooks bench/playbooks --old /tmp/main --rounds 5 --skip-counts
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from engine.format.validation import load_valid_playbooks
from engine.plan import reader
from engine.plan.build import make_plan
from engine.plan.set_plan import holdout_sql
from engine.query.evaluate import compose, count, prepare
from engine.store.open import make_engine

ROOT = Path(__file__).resolve().parent.parent
AS_OF = datetime(2025, 1, 1, tzinfo=UTC)  # bench/gen_data.py's END
SAMPLES_DIR = ROOT / "playbooks"  # not `from playbooks import`: bench/playbooks shadows it here
TARGET = 2.0  # issue 14: the whole plan as JSON within 2x of the text dry-run


def in_process(db: Path, folder: Path) -> None:
    """Per playbook: COUNT(*) s, holdout counted in SQL s, the candidates streamed as the database
    scans them and in the plan's (customer_id, occurrence) order, every enrollment planned s."""
    playbooks = load_valid_playbooks([folder])
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


# --- the whole plan as JSON against the text dry-run, in one process ------------------------


class _Sink(io.TextIOBase):
    """stdout for the measured commands: counts what they write, keeps nothing."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        return len(text)

    def writable(self) -> bool:
        return True


def command_seconds(db: Path, folder: Path, as_json: bool) -> tuple[float, int]:
    """One `retain dry-run [--json]` of `folder` as the CLI runs it (cli/evaluate.py `dry_run`:
    settings, playbooks loaded, the plan, its warnings and its output), stdout dropped: seconds
    and characters written. Whatever tree is first on sys.path is the one measured."""
    import typer

    from cli.evaluate import dry_run

    ctx: Any = SimpleNamespace(obj=SimpleNamespace(db_url=f"sqlite:///{db}"))
    sink = _Sink()
    started = time.perf_counter()
    with contextlib.redirect_stdout(sink):
        try:
            dry_run(ctx, [folder], as_of=AS_OF.date().isoformat(), customer=None, show=None,
                    as_json=as_json)
        except typer.Exit as stop:  # errors in the plan: the same work was done
            if stop.exit_code not in (0, 1):
                raise
    return time.perf_counter() - started, sink.chars


def json_vs_text(db: Path, folder: Path, rounds: int) -> dict[str, Any]:
    """`rounds` of the text dry-run and the JSON one interleaved (which goes first alternates),
    after one warm-up of each: every round's seconds, and what each wrote."""
    found: dict[str, Any] = {"text": [], "json": [], "chars": {}}
    for as_json in (False, True):
        found["chars"]["json" if as_json else "text"] = command_seconds(db, folder, as_json)[1]
    for n in range(rounds):
        for as_json in ((False, True) if n % 2 == 0 else (True, False)):
            found["json" if as_json else "text"].append(command_seconds(db, folder, as_json)[0])
    return found


def json_vs_text_trees(db: Path, folder: Path, old: Path | None, rounds: int) -> None:
    """`json_vs_text` for this tree and `old`, each in a child process on its own code, the
    trees taking turns round by round: median seconds and the JSON/text ratio per tree."""
    trees = {"new": ROOT, **({"old": old} if old else {})}
    found: dict[str, dict[str, list[float]]] = {name: {"text": [], "json": [], "ratio": []}
                                                for name in trees}
    chars: dict[str, dict[str, int]] = {}
    for _ in range(rounds):
        for name, tree in trees.items():
            args = [sys.executable, str(Path(__file__).resolve()), str(db), "--child",
                    "--playbooks", str(folder.resolve()), "--rounds", "3"]
            out = subprocess.run(args, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                                 check=True, capture_output=True, text=True).stdout
            result = json.loads(out)
            found[name]["text"] += result["text"]
            found[name]["json"] += result["json"]
            found[name]["ratio"] += [j / t for t, j in zip(result["text"], result["json"],
                                                           strict=True)]
            chars[name] = result["chars"]
    print(f"\nIn process ({_named(folder)}, {rounds} x 3 interleaved rounds per tree):\n")
    print("| code | text dry-run s | dry-run --json s | --json / text (median of rounds) "
          "| output chars text / json |")
    print("|---|---|---|---|---|")
    for name, runs in found.items():
        print(f"| {name} | {statistics.median(runs['text']):.3f} "
              f"| {statistics.median(runs['json']):.3f} "
              f"| {statistics.median(runs['ratio']):.2f} (max {max(runs['ratio']):.2f}) "
              f"| {chars[name]['text']:,} / {chars[name]['json']:,} |")


def _named(folder: Path) -> str:
    """The playbooks folder as the tables name it: relative to the repository when inside."""
    return str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)


# --- the same commands as processes -----------------------------------------------------------


def process(tree: Path, db: Path, folder: Path, as_json: bool) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `retain dry-run` of `folder` from `tree`."""
    code = "import sys; from cli.main import main; sys.argv[0] = 'retain'; main()"
    args = [sys.executable, "-c", code, "--db", f"sqlite:///{db}", "dry-run",
            str(folder), "--as-of", AS_OF.date().isoformat(),
            *(["--json"] if as_json else [])]
    started = time.perf_counter()
    with subprocess.Popen(args, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                          stdout=subprocess.DEVNULL) as child:
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = status
    if status not in (0, 256):  # 256: exit 1, the plan has errors (still all planned)
        raise SystemExit(f"dry-run from {tree} failed ({status})")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def processes(db: Path, folder: Path, old: Path | None, rounds: int) -> None:
    """Median wall time and max peak RSS per tree and mode, rounds interleaved."""
    trees = {"new": ROOT, **({"old": old} if old else {})}
    found: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for name, tree in trees.items():
            for as_json in (True, False):
                found.setdefault((name, as_json), []).append(
                    process(tree, db, folder, as_json))
    print(f"\nAs processes ({_named(folder)}, {rounds} rounds):\n")
    print("| code | command | median s | peak RSS MB |\n|---|---|---|---|")
    for (name, as_json), runs in found.items():
        print(f"| {name} | dry-run{' --json' if as_json else ''} "
              f"| {statistics.median(s for s, _ in runs):.2f} | {max(m for _, m in runs):.0f} |")
    for name in trees:
        ratio = (statistics.median(s for s, _ in found[(name, True)])
                 / statistics.median(s for s, _ in found[(name, False)]))
        print(f"\n{name}: --json / text as processes {ratio:.2f} (target <= {TARGET:g})")


# --- a bench database of either shape ----------------------------------------------------------


def build(customers: int, shape: str, out: Path) -> Path:
    """`out/plan-<N>-<shape>.db` synced once from bench/gen_data.py's files (made if missing),
    under a temporary name renamed at the end; `now` is the generator's end (as bench_eval)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_eval import load_into
    from bench_sync import ensure_data

    target = out / f"plan-{customers}-{shape}.db"
    if target.is_file():
        return target
    out.mkdir(parents=True, exist_ok=True)
    data = ensure_data(customers, 1, "csv", shape)
    building = out / f"plan-{customers}-{shape}.building.db"
    for leftover in out.glob(building.name + "*"):
        leftover.unlink()
    started = time.perf_counter()
    load_into(building, data)
    building.rename(target)
    print(f"built {target} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path, nargs="?")
    parser.add_argument("--playbooks", type=Path, default=SAMPLES_DIR,
                        help="the playbooks planned (default: the samples)")
    parser.add_argument("--old", type=Path, help="another source tree to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-counts", action="store_true",
                        help="only the JSON/text comparison (not the per-playbook table)")
    parser.add_argument("--skip-processes", action="store_true",
                        help="only in process (not the commands as separate processes)")
    parser.add_argument("--build", type=int, metavar="N", help="build plan-N-SHAPE.db in --out")
    parser.add_argument("--shape", choices=("many", "few"), default="many")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.build:
        print(build(options.build, options.shape, options.out))
        return
    if options.db is None:
        parser.error("a database (or --build N)")
    options.db = options.db.resolve()  # the child processes run in their own tree
    folder = options.playbooks.resolve()
    if options.child:  # one tree's in-process rounds, for json_vs_text_trees
        print(json.dumps(json_vs_text(options.db, folder, options.rounds)))
        return
    if not options.skip_counts:
        in_process(options.db, folder)
    json_vs_text_trees(options.db, folder, options.old, options.rounds)
    if not options.skip_processes:
        processes(options.db, folder, options.old, options.rounds)


if __name__ == "__main__":
    main()
