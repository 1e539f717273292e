"""Start-up cost of the CLI: `retain --help` and `retain validate` against `import typer`.

Targets (issue 11): `retain --help` within 5x and `retain validate` of the sample playbooks
within 10x of `python -c "import typer"` in the same venv. Each command is run as a fresh
process, interleaved with the baseline in the same minute (this machine is shared and noisy), and
the ratio of medians is reported.

    python bench/bench_startup.py --repeat 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RETAIN = [sys.executable, "-c", "from cli.main import main; main()"]
CASES = {
    "import typer (baseline)": [sys.executable, "-c", "import typer"],
    "retain --help": [*RETAIN, "--help"],
    "retain validate playbooks/": [*RETAIN, "validate", str(REPO / "playbooks")],
}
TARGETS = {"retain --help": 5.0, "retain validate playbooks/": 10.0}


def wall(command: list[str]) -> float:
    """Seconds for one fresh process to run `command` to the end (output discarded)."""
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    """Run every case `--repeat` times, interleaved, and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for command in CASES.values():  # warm the file cache and .pyc files once
        wall(command)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeat):
        for name, command in CASES.items():
            times[name].append(wall(command))
    base = statistics.median(times["import typer (baseline)"])
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        target = TARGETS.get(name)
        rows.append({"case": name, "median_s": round(median, 3), "ratio": round(median / base, 1),
                     "target": target, "met": None if target is None else median / base <= target})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        target = "" if row["target"] is None else \
            f"  target <= {row['target']:g}x: {'met' if row['met'] else 'MISSED'}"
        print(f"{row['case']:<28} {row['median_s']:>7.3f} s  {row['ratio']:>5.1f}x{target}")


if __name__ == "__main__":
    main()
