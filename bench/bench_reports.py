"""Benchmark the KPI reports: `retain report retention` at 1,000,000 customers, 10,000,000 events.

The issue's target: on SQLite, at 1,000,000 customers and 10,000,000 events, the retention
report finishes in under 30 seconds. Measured here:

- **the report**, `engine.reports.retention.build` for monthly (the default), quarterly and
  weekly periods, each round in a fresh subprocess (a cold Python, the OS file cache warm after
  an untimed first round), wall and CPU seconds and peak RSS; the median of `--repeat` rounds;
- **the command**, `retain --db ... report retention --json` end to end (interpreter start,
  imports, JSON out), as a user runs it;
- **the alternatives** the module docstring weighs (`--alternatives`), on the same database,
  each computing only S at every monthly boundary, which is less than the report does: one
  `COUNT(DISTINCT customer_id)` per boundary over its window; "activity spells" from LAG and
  running-SUM window functions; and just the first step of the per (customer, month) approach,
  its GROUP BY. Their S must equal the report's, so this is also a check at full size.

The database: bench/bench_eval.py's bench/out/eval-1000000.db (1M customers, 8,485,575 events
synced from bench/gen_data.py's seeded files, built if missing) is copied through SQLite's
backup API and topped up to exactly 10,000,000 events by repeating the earliest-id events whose
id is 0-4 mod 28 two days later (capped at the generator's end), as repeat visits of the same
customers. Kept as bench/out/reports-1000000-10000000.db (gitignored).

    python bench/bench_reports.py [--repeat 3] [--alternatives] [--json]

Results go to bench/out/reports-results.json; docs/BENCHMARKS.md, "Reports", has the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
RESULTS = OUT / "reports-results.json"
CUSTOMERS = 1_000_000
EVENTS = 10_000_000
TARGET_SECONDS = 30.0
KINDS = ("month", "quarter", "week")
GENERATOR_END = "2025-01-01 00:00:00.000000"  # bench/gen_data.py's END, as SQLite stores it


# --- the database ----------------------------------------------------------------------------


def ensure_db(customers: int = CUSTOMERS, events: int = EVENTS) -> Path:
    """bench/out/reports-<customers>-<events>.db: the eval database topped up to `events`."""
    target = OUT / f"reports-{customers}-{events}.db"
    if target.is_file():
        return target
    source = OUT / f"eval-{customers}.db"
    if not source.is_file():
        from bench_eval import ensure_db as eval_db  # bench/ is sys.path[0] as a script

        source = eval_db(customers, 1)
    building = OUT / f"{target.stem}.building.db"
    building.unlink(missing_ok=True)
    started = time.perf_counter()
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, \
            sqlite3.connect(building) as dst:
        src.backup(dst)  # a consistent copy even if another benchmark reads the source
    with sqlite3.connect(building) as db:
        have = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        if have < events:
            # Two days later, never past the generator's end; ids `x<event_id>` stay unique.
            db.execute(
                "INSERT INTO events (event_id, customer_id, type, occurred_at, amount, score,"
                " properties)"
                " SELECT 'x' || event_id, customer_id, type,"
                "  min(strftime('%Y-%m-%d %H:%M:%S.000000', occurred_at, '+2 days'), ?),"
                "  amount, score, properties"
                " FROM events WHERE id % 28 < 5 ORDER BY id LIMIT ?",
                (GENERATOR_END, events - have))
            db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        count = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    db.close()
    if count != events:
        raise SystemExit(f"{building}: {count:,} events after the top-up, wanted {events:,}")
    building.rename(target)
    print(f"built {target.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return target


# --- measurements, each in a child process ---------------------------------------------------


def child_build(db: Path, kind: str) -> dict[str, Any]:
    """One timed build() of the retention report (imports before the clock)."""
    from engine.reports import retention
    from engine.reports.periods import PeriodKind
    from engine.store.open import open_reader

    engine = open_reader(f"sqlite:///{db}")
    with engine.connect() as connection:
        wall, cpu = time.perf_counter(), time.process_time()
        report = retention.build(connection, kind=PeriodKind(kind))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    document = report.to_json()
    return {"kind": kind, "seconds": wall, "cpu_seconds": cpu,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "periods": len(document["periods"]), "cohorts": len(document["cohorts"]),
            "boundaries": [p["start"] for p in document["periods"]]
            + [document["periods"][-1]["end"]] if document["periods"] else [],
            "start_customers": [p["start_customers"] for p in document["periods"]],
            "end_customers": [p["end_customers"] for p in document["periods"]],
            "crr": [p["crr"] for p in document["periods"]]}


def _types(raw: sqlite3.Connection) -> tuple[list[str], str]:
    """The activity types, and the SQL filter for them: none when every type is activity (as
    the report does; a `type IN` makes SQLite read ix_events_type_time and sort every event)."""
    from engine.store.facts import ENGINE_EVENT_TYPES

    present = [t for (t,) in raw.execute("SELECT DISTINCT type FROM events")]
    types = [t for t in present if t not in ENGINE_EVENT_TYPES]
    marks = ",".join("?" * len(types))
    return types, ("1" if types == present else f"type || '' IN ({marks})")


def _stored(iso: str) -> str:
    """A JSON instant (`...Z`) as SQLite stores times."""
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def child_alternative(db: Path, method: str, boundaries: list[str], days: int) -> dict[str, Any]:
    """S at every boundary by one of the rejected methods, timed (type list read before)."""
    raw = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    types, activity = _types(raw)
    marks = ",".join("?" * len(types))
    filtered = types if activity != "1" else []
    stored = [_stored(b) for b in boundaries]
    wall, cpu = time.perf_counter(), time.process_time()
    found: list[int] | None
    if method == "count-distinct-per-boundary":
        found = []
        for at in stored:
            start = (datetime.fromisoformat(at) - timedelta(days=days)).strftime(
                "%Y-%m-%d %H:%M:%S.%f")
            found.append(raw.execute(
                f"SELECT COUNT(DISTINCT customer_id) FROM events WHERE type IN ({marks})"
                " AND occurred_at >= ? AND occurred_at < ?", (*types, start, at)).fetchone()[0])
    elif method == "spells-window-functions":
        raw.execute("CREATE TEMP TABLE bounds (at TEXT PRIMARY KEY)")
        raw.executemany("INSERT INTO bounds VALUES (?)", [(b,) for b in stored])
        rows = dict(raw.execute(f"""
            WITH marked AS (
              SELECT customer_id, occurred_at,
                     CASE WHEN julianday(occurred_at) - julianday(LAG(occurred_at) OVER w) <= ?
                          THEN 0 ELSE 1 END AS fresh
              FROM events WHERE {activity} AND occurred_at < ?
              WINDOW w AS (PARTITION BY customer_id ORDER BY occurred_at)),
            numbered AS (
              SELECT customer_id, occurred_at, SUM(fresh) OVER (PARTITION BY customer_id
                     ORDER BY occurred_at ROWS UNBOUNDED PRECEDING) AS spell FROM marked),
            spells AS (
              SELECT MIN(occurred_at) AS first, julianday(MAX(occurred_at)) + ? AS reach
              FROM numbered GROUP BY customer_id, spell)
            SELECT bounds.at, COUNT(*) FROM spells JOIN bounds
              ON bounds.at > spells.first AND julianday(bounds.at) <= spells.reach
            GROUP BY bounds.at""", (days, *filtered, stored[-1], days)).fetchall())
        found = [rows.get(b, 0) for b in stored]
    elif method == "group-by-customer-month-first-step":
        raw.execute(f"SELECT COUNT(*) FROM (SELECT customer_id, substr(occurred_at, 1, 7) AS m,"
                    f" MAX(occurred_at) FROM events WHERE {activity} AND occurred_at < ?"
                    " GROUP BY customer_id, m)", (*filtered, stored[-1])).fetchone()
        found = None
    else:
        raise SystemExit(f"unknown method {method}")
    return {"method": method, "seconds": time.perf_counter() - wall,
            "cpu_seconds": time.process_time() - cpu, "start_customers": found}


def _child(*args: str) -> dict[str, Any]:
    """Run this script as a child measurement; its last stdout line is the JSON result."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                          text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise SystemExit(f"child {args} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def command(db: Path) -> dict[str, Any]:
    """`retain report retention --json` end to end, as a user runs it."""
    retain = Path(sys.executable).with_name("retain")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([str(retain), "--db", f"sqlite:///{db}", "report", "retention",
                           "--json"], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"retain report retention failed:\n{done.stderr}")
    periods = json.loads(done.stdout)["periods"]
    return {"seconds": wall, "cpu_seconds": (after.ru_utime - before.ru_utime)
            + (after.ru_stime - before.ru_stime), "periods": len(periods)}


# --- driving -----------------------------------------------------------------------------------


def measure(db: Path, repeat: int, alternatives: bool) -> dict[str, Any]:
    """Warm-up, then `repeat` rounds of each kind interleaved, the command, the alternatives."""
    rounds: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for kind in KINDS:
        print(f"warm-up {kind}", file=sys.stderr, flush=True)
        _child("build", str(db), kind)
    for round_ in range(repeat):
        for kind in KINDS:  # interleaved: a burst of load elsewhere hits every kind alike
            result = _child("build", str(db), kind)
            print(f"round {round_ + 1} {kind}: {result['seconds']:.1f} s", file=sys.stderr,
                  flush=True)
            rounds[kind].append(result)
    runs = [command(db) for _ in range(repeat)]
    monthly = rounds["month"][0]
    document: dict[str, Any] = {
        "reports": {kind: summarize(results) for kind, results in rounds.items()},
        "command": {"seconds": statistics.median(r["seconds"] for r in runs),
                    "max_seconds": max(r["seconds"] for r in runs),
                    "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs)},
        "alternatives": [],
    }
    if alternatives:
        for method in ("count-distinct-per-boundary", "spells-window-functions",
                       "group-by-customer-month-first-step"):
            print(f"alternative {method}", file=sys.stderr, flush=True)
            found = _child("alternative", str(db), method, json.dumps(monthly["boundaries"]),
                           "90")
            s_values = monthly["start_customers"] + monthly["end_customers"][-1:]
            found["same_s_as_report"] = (None if found["start_customers"] is None
                                         else found["start_customers"] == s_values)
            document["alternatives"].append(found)
    return document


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and worst of the rounds, and what the report found (same every round)."""
    seconds = [r["seconds"] for r in results]
    return {"seconds": statistics.median(seconds), "max_seconds": max(seconds),
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in results),
            "peak_mb": max(r["peak_mb"] for r in results), "periods": results[0]["periods"],
            "cohorts": results[0]["cohorts"], "rounds": seconds,
            "same_every_round": all(r["crr"] == results[0]["crr"] for r in results)}


def markdown(document: dict[str, Any]) -> str:
    """The tables docs/BENCHMARKS.md shows."""
    lines = ["| report | periods | median s | worst s | CPU s | peak MB | < 30 s |",
             "|---|---|---|---|---|---|---|"]
    for kind, r in document["reports"].items():
        lines.append(f"| retention --period {kind} | {r['periods']} | {r['seconds']:.1f} | "
                     f"{r['max_seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_mb']:.0f} | "
                     f"{'yes' if r['max_seconds'] < TARGET_SECONDS else 'NO'} |")
    c = document["command"]
    lines.append(f"| `retain report retention --json` (whole command) | | {c['seconds']:.1f} | "
                 f"{c['max_seconds']:.1f} | {c['cpu_seconds']:.1f} | | "
                 f"{'yes' if c['max_seconds'] < TARGET_SECONDS else 'NO'} |")
    if document["alternatives"]:
        lines += ["", "| alternative (S at each monthly boundary only) | s | CPU s | same S |",
                  "|---|---|---|---|"]
        for a in document["alternatives"]:
            same = {None: "n/a", True: "yes", False: "NO"}[a["same_s_as_report"]]
            lines.append(f"| {a['method']} | {a['seconds']:.1f} | {a['cpu_seconds']:.1f} | "
                         f"{same} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """CLI entry (and the children's)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--child", "build"]:
        print(json.dumps(child_build(Path(argv[2]), argv[3])))
        return
    if argv[:2] == ["--child", "alternative"]:
        print(json.dumps(child_alternative(Path(argv[2]), argv[3], json.loads(argv[4]),
                                           int(argv[5]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds per kind (median kept)")
    parser.add_argument("--alternatives", action="store_true",
                        help="also time the rejected methods (a few minutes)")
    parser.add_argument("--json", action="store_true", help="print the JSON document")
    args = parser.parse_args(argv)
    db = ensure_db()
    started = datetime.now(UTC)
    load = os.getloadavg()
    document = measure(db, args.repeat, args.alternatives)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as raw:
        sizes = [raw.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                 for t in ("customers", "events")]
    document.update({"started": started.isoformat(timespec="seconds"), "db": str(db),
                     "customers": sizes[0], "events": sizes[1], "cpus": os.cpu_count(),
                     "load_before": load, "load_after": os.getloadavg(),
                     "python": platform.python_version(), "sqlite": sqlite3.sqlite_version})
    RESULTS.write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2) if args.json else
          f"{sizes[0]:,} customers, {sizes[1]:,} events, load {load[0]:.1f} -> "
          f"{document['load_after'][0]:.1f}\n\n" + markdown(document))
    print(f"\nwritten {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
