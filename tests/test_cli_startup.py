"""The CLI imports what a command needs when it runs (cli/main.py COMMANDS), nothing at start-up.

Timing lives in bench/bench_startup.py; these tests check the cause instead: which libraries a
fresh process has loaded after `retain --help` and after `retain validate`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import COMMANDS, load_command

REPO = Path(__file__).resolve().parent.parent
HEAVY = {"sqlalchemy", "sqlmodel", "alembic", "psycopg", "matplotlib", "numpy", "pyarrow",
         "jinja2", "pydantic", "rich", "yaml", "croniter"}


def loaded_after(args: list[str]) -> set[str]:
    """Top-level modules a fresh `retain ARGS` process has imported when it ends."""
    code = ("import sys, json\nfrom cli.main import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=REPO)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_help_loads_no_heavy_library() -> None:
    assert loaded_after(["--help"]) & HEAVY == set()


def test_validate_loads_no_database_driver_or_charting() -> None:
    loaded = loaded_after(["validate", str(REPO / "playbooks")])
    assert loaded & {"matplotlib", "numpy", "pyarrow", "alembic", "psycopg"} == set()
    assert "yaml" in loaded  # the command did run


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_listed_help_is_the_commands_own(name: str) -> None:
    """`retain --help` lists COMMANDS' text without importing: it must not drift from the code."""
    command = load_command(name)
    own = " ".join((command.help or "").split("\n\n")[0].split())
    assert own == COMMANDS[name][1]
