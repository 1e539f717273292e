"""Invariants of the code base: registries, schema and docs agree; packaging; import direction."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from engine.format.conditions import OPERATORS
from engine.format.registry import load_connectors
from engine.format.schema import playbook_schema
from engine.format.triggers import TRIGGERS

REPO = Path(__file__).resolve().parent.parent
REFERENCE = (REPO / "docs" / "PLAYBOOKS.md").read_text(encoding="utf-8")


def test_registered_names_match_the_schema() -> None:
    schema = playbook_schema()
    assert list(schema["properties"]["trigger"]["properties"]) == list(TRIGGERS)
    ops = schema["$defs"]["condition"]["properties"]["total_spent"]["properties"]
    assert list(ops) == list(OPERATORS)
    actions = schema["properties"]["actions"]["items"]["properties"]
    assert set(actions) == {"wait", *load_connectors()}
    for name, cls in TRIGGERS.items():
        assert cls.kind == name  # type: ignore[attr-defined]


def test_every_kind_is_documented() -> None:
    names = [*TRIGGERS, *OPERATORS, *load_connectors(), "wait"]
    missing = [name for name in names if f"`{name}`" not in REFERENCE]
    assert missing == []


def test_builtin_connectors_come_through_entry_points() -> None:
    assert {"email", "task", "points", "webhook"} <= set(load_connectors())


def trigger_doc_examples() -> list[tuple[str, str]]:
    found = []
    for name, cls in TRIGGERS.items():
        for block in re.findall(r"```yaml\n(.*?)```", cls.__doc__ or "", re.S):
            found.append((name, block))
    return found


@pytest.mark.parametrize(("name", "block"), trigger_doc_examples())
def test_docstring_examples_validate(name: str, block: str, tmp_path: Path) -> None:
    import textwrap

    from engine.format.validation import load_playbooks
    text = f"id: example\nname: Example\n{textwrap.dedent(block)}actions:\n  - wait: 1d\n"
    (tmp_path / "example.yaml").write_text(text)
    result = load_playbooks([tmp_path / "example.yaml"], env={})
    assert result.issues == [], text
    assert result.playbooks[0].trigger.kind == name  # type: ignore[attr-defined]


def test_engine_never_imports_cli_or_connectors() -> None:
    code = ("import sys, engine.format.validation, engine.format.schema, engine.store.open, engine.store.tables;"
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                       text=True, check=True, cwd=REPO / "tests"
                                       ).stdout.replace("'", '"'))
    assert "cli" not in loaded
    # connectors are reached only through entry points, which these imports do not load
    assert "connectors" not in loaded


@pytest.mark.slow
def test_wheel_contains_exactly_our_packages(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)], check=True)
    wheel = next(tmp_path.glob("retain-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("retain-")}
    assert top == {"engine", "connectors", "cli", "playbooks"}
    assert "engine/store/migrations/versions/0001_initial_schema.py" in names
    assert "playbooks/winback-30d.yaml" in names
    assert "playbooks/templates/winback.txt.j2" in names
    assert not any(n.startswith("tests/") for n in names)


def test_sample_playbooks_parse_as_plain_yaml() -> None:
    for path in (REPO / "playbooks").glob("*.yaml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
