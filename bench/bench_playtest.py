"""Time of `retain test` per test of the samples (playbooks/tests), against baselines measured
in the same run.

Issue 15's target: "fast enough for a pre-commit hook: under 50 ms per test of the samples".
Measured here:

- in a fresh process (a child of this script, `--processes` of them): the template store
  (migrated once per process), loading the test files and their playbooks, the first test
  (cold: first use of every import and compiled statement), then every test again `--repeat`
  times (warm); wall time and CPU time of the process (`time.process_time`, all threads: less
  sensitive than wall time to the other jobs on this shared machine);
- the in-process baseline, in the same children: one bare `run_cycle` (evaluation, plan,
  commit, resume, dispatch) at the first test's clock on a fresh store holding that test's
  customers and events: one `run` step and nothing else a test adds (sync, reads, checks);
- whole processes, interleaved round by round: `retain test` of the samples against `retain
  validate` of the sample playbooks (start-up, imports, playbook loading: the floor of any
  command that reads the playbooks).

    python bench/bench_playtest.py                          # the samples, 3 processes
    python bench/bench_playtest.py --tests playbooks/tests --processes 5 --repeat 10
    python bench/bench_playtest.py --profile                # where a warm test's time goes
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RETAIN = [sys.executable, "-c", "from cli.main import main; main()"]
TARGET_MS = 50.0


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict[str, float]:
    wall, cpu = _clocks()
    return {"wall_ms": (wall - start[0]) * 1000, "cpu_ms": (cpu - start[1]) * 1000}


def child(paths: list[Path], repeat: int, baseline_rounds: int) -> dict[str, Any]:
    """One fresh process: template, load, cold test, warm tests, bare run_cycle baseline."""
    start = _clocks()
    from engine.playtest.run import run_case
    from engine.playtest.stores import SqliteStores
    from engine.playtest.suite import load_suite

    out: dict[str, Any] = {"imports": _since(start)}
    mark = _clocks()
    stores = SqliteStores()
    out["template"] = _since(mark)
    mark = _clocks()
    loaded, folders, issues = load_suite(paths)
    out["load"] = _since(mark)
    if issues:
        raise SystemExit("\n".join(str(issue) for issue in issues))
    cases = [(test_file, case) for test_file in loaded for case in test_file.cases]
    if not cases:
        raise SystemExit(f"no tests under {', '.join(map(str, paths))}")

    def one(test_file: Any, case: Any) -> dict[str, float]:
        mark = _clocks()
        result = run_case(test_file, case, folders[test_file.playbook_folder], stores.fresh)
        if result.outcome != "passed":
            raise SystemExit(f"{result.where}: {result.outcome}: {result.error or result.failures}")
        return _since(mark)

    out["cold"] = one(*cases[0])
    out["first_pass"] = [one(*pair) for pair in cases[1:]]
    out["warm"] = {f"{t.path.name}: {c.name}": [] for t, c in cases}
    for _ in range(repeat):
        # as in one `retain test`: a test starts from a kept store only when an earlier test of
        # the same pass synced the same rows (not from the pass before)
        getattr(stores, "givens", {}).clear()
        for test_file, case in cases:
            out["warm"][f"{test_file.path.name}: {case.name}"].append(one(test_file, case))
    out["run_cycle"] = [_bare_run_cycle(stores, folders, *cases[0])
                        for _ in range(baseline_rounds)]
    stores.close()
    return out


def _bare_run_cycle(stores: Any, folders: Any, test_file: Any, case: Any) -> dict[str, float]:
    """One `run_cycle` on a fresh store with the test's customers and events synced (not
    timed): what a `run` step costs on its own."""
    from engine.outbox.run import run_cycle
    from engine.playtest.model import DEFAULT_START, resolve_time
    from engine.playtest.record import test_connectors
    from engine.playtest.run import State, _given, settings_for

    playbooks = folders[test_file.playbook_folder]
    settings = settings_for(case.settings)
    with stores.fresh() as engine:
        state = State(engine, test_file, {pid: playbooks[pid] for pid in test_file.playbooks},
                      settings, resolve_time(test_file.start or DEFAULT_START, DEFAULT_START))
        assert not _given(state, case)
        mark = _clocks()
        run_cycle(engine, list(state.playbooks.values()), state.clock, settings,
                  connectors=test_connectors(settings, state.recorder))
        return _since(mark)


def _wall(command: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + sys) milliseconds of one fresh process running `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   cwd=REPO)
    wall = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


def _median(samples: list[dict[str, float]], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def profile(paths: list[Path], repeat: int) -> None:
    """cProfile of warm passes over the tests (after a first pass, loading not included),
    top functions by cumulative time."""
    import cProfile
    import pstats

    from engine.playtest.run import run_case
    from engine.playtest.stores import SqliteStores
    from engine.playtest.suite import load_suite

    stores = SqliteStores()
    loaded, folders, _ = load_suite(paths)

    def one_pass() -> None:
        stores.givens.clear()  # as in one `retain test`
        for test_file in loaded:
            for case in test_file.cases:
                run_case(test_file, case, folders[test_file.playbook_folder], stores.fresh)

    one_pass()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeat):
        one_pass()
    profiler.disable()
    stores.close()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=Path, nargs="+", default=[REPO / "playbooks" / "tests"])
    parser.add_argument("--processes", type=int, default=3, help="fresh processes (children)")
    parser.add_argument("--repeat", type=int, default=5, help="warm passes per process")
    parser.add_argument("--baseline", type=int, default=5, help="bare run_cycles per process")
    parser.add_argument("--cli", type=int, default=5, help="rounds of whole processes")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.tests, args.repeat, args.baseline)))
        return
    if args.profile:
        profile(args.tests, args.repeat)
        return
    children = []
    for _ in range(args.processes):
        done = subprocess.run([sys.executable, __file__, "--child", "--repeat", str(args.repeat),
                               "--baseline", str(args.baseline), "--tests",
                               *map(str, args.tests)],
                              capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            raise SystemExit(done.stderr or done.stdout)
        children.append(json.loads(done.stdout))
    commands = {"retain validate playbooks/ (baseline)": [*RETAIN, "validate",
                                                          str(REPO / "playbooks")],
                "retain test " + " ".join(map(str, args.tests)): [*RETAIN, "test",
                                                                  *map(str, args.tests)]}
    for command in commands.values():  # warm the file cache and .pyc files
        _wall(command)
    processes: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.cli):
        for name, command in commands.items():
            processes[name].append(_wall(command))
    report = summarize(children, processes)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_report(report, args)


def summarize(children: list[dict[str, Any]], processes: dict[str, list[tuple[float, float]]]
              ) -> dict[str, Any]:
    base = [s for c in children for s in c["run_cycle"]]
    names = list(children[0]["warm"])
    rows: dict[str, Any] = {}
    for key in ("imports", "template", "load", "cold"):
        samples = [c[key] for c in children]
        rows[key] = {"wall_ms": _median(samples, "wall_ms"), "cpu_ms": _median(samples, "cpu_ms")}
    per_test = {}
    for name in names:
        samples = [s for c in children for s in c["warm"][name]]
        per_test[name] = {"wall_ms": _median(samples, "wall_ms"),
                          "cpu_ms": _median(samples, "cpu_ms")}
    rows["warm, mean per test"] = {  # a pass over the tests divided by their number
        key: statistics.mean(row[key] for row in per_test.values())
        for key in ("wall_ms", "cpu_ms")}
    baseline = {"wall_ms": _median(base, "wall_ms"), "cpu_ms": _median(base, "cpu_ms")}
    tests = len(names)
    whole = {name: {"wall_ms": statistics.median(w for w, _ in samples),
                    "cpu_ms": statistics.median(c for _, c in samples)}
             for name, samples in processes.items()}
    return {"tests": tests, "in_process": rows, "per_test": per_test,
            "run_cycle_baseline": baseline, "processes_ms": whole, "target_ms": TARGET_MS}


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    base = report["run_cycle_baseline"]
    print(f"{report['tests']} test(s); medians over {args.processes} fresh processes, "
          f"{args.repeat} warm passes each; baseline: one bare run_cycle "
          f"({base['wall_ms']:.1f} ms wall, {base['cpu_ms']:.1f} ms CPU)\n")
    print("| in process | wall ms | CPU ms | x run_cycle (CPU) |")
    print("|---|---:|---:|---:|")
    for name, row in report["in_process"].items():
        print(f"| {name} | {row['wall_ms']:.1f} | {row['cpu_ms']:.1f} | "
              f"{row['cpu_ms'] / base['cpu_ms']:.1f} |")
    for name, row in report["per_test"].items():
        print(f"| warm: {name[:70]} | {row['wall_ms']:.1f} | {row['cpu_ms']:.1f} | "
              f"{row['cpu_ms'] / base['cpu_ms']:.1f} |")
    print("\n| whole process (median of rounds) | wall ms | CPU ms | x validate (CPU) |")
    print("|---|---:|---:|---:|")
    names = list(report["processes_ms"])
    floor = report["processes_ms"][names[0]]
    for name in names:
        ms = report["processes_ms"][name]
        print(f"| {name} | {ms['wall_ms']:.0f} | {ms['cpu_ms']:.0f} | "
              f"{ms['cpu_ms'] / floor['cpu_ms']:.2f} |")
    extra = (report["processes_ms"][names[1]]["cpu_ms"] - floor["cpu_ms"]) / report["tests"]
    warm = report["in_process"]["warm, mean per test"]
    print(f"\nper test: warm {warm['wall_ms']:.1f} ms wall / {warm['cpu_ms']:.1f} ms CPU; "
          f"whole process beyond validate {extra:.0f} ms CPU per test; target "
          f"{report['target_ms']:.0f} ms: warm {'met' if warm['wall_ms'] < TARGET_MS else 'NOT met'}")
    print("repeat: python bench/bench_playtest.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
