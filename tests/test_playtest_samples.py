"""`retain test` over the sample playbooks' own tests (playbooks/tests/), as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Cli

REPO = Path(__file__).resolve().parent.parent


def test_the_samples_tests_pass(cli: Cli) -> None:
    code, out, err = cli(["test", str(REPO / "playbooks"), "--json"])
    result = json.loads(out)
    failed = [t for t in result["tests"] if t["outcome"] != "passed"]
    assert (code, err, result["issues"], failed) == (0, "", [], [])
    assert result["tests"], "the samples ship with tests"
