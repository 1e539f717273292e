"""The generated JSON Schema: valid, current on disk, and in agreement with the validator."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from engine.format.schema import SCHEMA_FILE, playbook_schema, schema_text
from engine.format.yamlsource import load_yaml_file

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted((REPO / "playbooks").glob("*.yaml"))
GOOD = sorted((Path(__file__).parent / "fixtures" / "playbooks" / "good").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = playbook_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_file_is_current() -> None:
    """`playbooks/playbook.schema.json` is generated; regenerate with `retain schema`."""
    assert (REPO / "playbooks" / SCHEMA_FILE).read_text() == schema_text()


@pytest.mark.parametrize("path", SAMPLES + GOOD, ids=[p.name for p in SAMPLES + GOOD])
def test_samples_validate_against_the_schema(path: Path,
                                             validator: jsonschema.Draft202012Validator) -> None:
    document, issues = load_yaml_file(path)
    assert issues == [] and document is not None
    assert [e.message for e in validator.iter_errors(document.data)] == []


def test_samples_carry_the_modeline() -> None:
    for path in SAMPLES:
        assert path.read_text().startswith(f"# yaml-language-server: $schema={SCHEMA_FILE}\n")


@pytest.mark.parametrize("raw", [
    {"id": "x", "name": "x", "trigger": {"inactive": {"days": 30}, "segment": {}},
     "actions": [{"wait": "1d"}]},
    {"id": "x", "name": "x", "trigger": {"inactve": {"days": 30}}, "actions": [{"wait": "1d"}]},
    {"id": "x", "name": "x", "trigger": {"segment": {}}, "when": [{"contry": {"eq": "x"}}],
     "actions": [{"wait": "1d"}]},
    {"id": "x", "name": "x", "trigger": {"segment": {}}, "actions": [{"wait": "30dd"}]},
    {"id": "x", "name": "x", "trigger": {"segment": {}}, "holdout": "ten",
     "actions": [{"wait": "1d"}]},
    {"id": "x", "name": "x", "trigger": {"segment": {}}, "actions": [{"sms": {}}]},
    {"id": "X_1", "name": "x", "trigger": {"segment": {}}, "actions": [{"wait": "1d"}]},
])
def test_schema_rejects_what_validate_rejects(raw: dict[str, object],
                                              validator: jsonschema.Draft202012Validator) -> None:
    assert list(validator.iter_errors(raw))


def test_schema_text_is_stable_json() -> None:
    assert json.loads(schema_text())["$schema"].endswith("2020-12/schema")
    assert schema_text() == schema_text()
