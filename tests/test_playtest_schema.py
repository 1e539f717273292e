"""The JSON Schema of playbook test files: generated, current on disk, in agreement with the
loader; and the test `retain init` scaffolds, which passes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import Cli

from cli.playbooks import EXAMPLE_TEST
from engine.format.registry import connector_names
from engine.format.yamlsource import load_yaml_file
from engine.playtest.load import load_test_file
from engine.playtest.schema import TEST_SCHEMA_FILE, playtest_schema, playtest_schema_text

REPO = Path(__file__).resolve().parent.parent
TESTS = sorted((REPO / "playbooks" / "tests").glob("*.test.yaml"))
MODELINE = f"# yaml-language-server: $schema={TEST_SCHEMA_FILE}\n"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = playtest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator: jsonschema.Draft202012Validator, data: Any) -> list[str]:
    return [e.message for e in validator.iter_errors(data)]


def test_committed_test_schema_file_is_current() -> None:
    """`playbooks/tests/test.schema.json` is generated: `retain schema --tests > ...`."""
    assert (REPO / "playbooks" / "tests" / TEST_SCHEMA_FILE).read_text() == playtest_schema_text()


def test_schema_tests_prints_the_generated_schema(cli: Cli) -> None:
    code, out, _ = cli(["schema", "--tests"])
    assert code == 0 and out == playtest_schema_text()
    assert json.loads(out)["$schema"].endswith("2020-12/schema")


def test_expectations_name_exactly_the_installed_action_kinds() -> None:
    action = playtest_schema()["$defs"]["action"]
    assert sorted(action["properties"]) == sorted(connector_names())
    assert action["additionalProperties"] is False


def test_there_are_sample_tests() -> None:
    assert TESTS, "playbooks/tests/ holds the samples' tests"


@pytest.mark.parametrize("path", TESTS, ids=[p.name for p in TESTS])
def test_sample_tests_validate_and_carry_the_modeline(
        path: Path, validator: jsonschema.Draft202012Validator) -> None:
    assert path.read_text().startswith(MODELINE)
    document, issues = load_yaml_file(path)
    assert issues == [] and document is not None
    assert errors(validator, document.data) == []


def test_the_init_example_validates(validator: jsonschema.Draft202012Validator,
                                    tmp_path: Path) -> None:
    assert EXAMPLE_TEST.startswith(MODELINE)
    path = tmp_path / "example.test.yaml"
    path.write_text(EXAMPLE_TEST)
    document, issues = load_yaml_file(path)
    assert issues == [] and document is not None
    assert errors(validator, document.data) == []


BASE: dict[str, Any] = {
    "playbooks": ["winback-30d"],
    "customers": [{"customer_id": "ana", "email": "ana@example.com", "created_at": "-200d"}],
    "events": [{"customer_id": "ana", "type": "purchase", "at": "-45d", "amount": 80}],
    "tests": [{"name": "t", "steps": ["run", {"advance": "3d"}, {"expect": {
        "entered": ["ana"], "sent": [{"email": {"customer": "ana", "subject": "Hi"}}]}}]}],
}


def _with(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    change(data)
    return data


REFUSED = {
    "unknown top-level key": lambda d: d.update(playbook=["winback-30d"]),
    "unknown key in a test": lambda d: d["tests"][0].update(step=["run"]),
    "unknown expectation": lambda d: d["tests"][0]["steps"][2]["expect"].update(entred=["ana"]),
    "unknown setting": lambda d: d.update(settings={"cap": {"email": "2/7d"}}),
    "unknown step": lambda d: d["tests"][0]["steps"].append({"wait": "3d"}),
    "two keys in a step": lambda d: d["tests"][0]["steps"].append({"run": None,
                                                                   "advance": "1d"}),
    "a word for a step": lambda d: d["tests"][0]["steps"].append("rn"),
    "malformed advance": lambda d: d["tests"][0]["steps"].append({"advance": "3 days"}),
    "unknown action kind": lambda d: d["tests"][0]["steps"][2]["expect"].update(
        sent=[{"emial": {"customer": "ana"}}]),
    "action without customer": lambda d: d["tests"][0]["steps"][2]["expect"].update(
        sent=[{"email": {"subject": "Hi"}}]),
    "unknown enrollment state": lambda d: d["tests"][0]["steps"][2]["expect"].update(
        enrollments={"ana": "done"}),
    "malformed time": lambda d: d["events"][0].update(at="45 days ago"),
    "malformed cap": lambda d: d.update(settings={"caps": {"email": "2 a week"}}),
    "malformed quiet hours": lambda d: d.update(settings={"quiet_hours": {"email": "9pm-8am"}}),
    "no tests": lambda d: d.update(tests=[]),
    "no steps": lambda d: d["tests"][0].update(steps=[]),
}


def test_the_base_document_is_valid(validator: jsonschema.Draft202012Validator,
                                    tmp_path: Path) -> None:
    assert errors(validator, BASE) == []
    path = tmp_path / "base.test.yaml"
    path.write_text(json.dumps(BASE))  # JSON is YAML
    loaded, issues = load_test_file(path)
    assert issues == [] and loaded is not None


@pytest.mark.parametrize("name", list(REFUSED))
def test_schema_refuses_what_the_loader_refuses(name: str, tmp_path: Path,
                                                validator: jsonschema.Draft202012Validator
                                                ) -> None:
    data = _with(REFUSED[name])
    assert errors(validator, data), f"the schema accepts: {name}"
    path = tmp_path / "bad.test.yaml"
    path.write_text(json.dumps(data))
    loaded, issues = load_test_file(path, connector_kinds=connector_names())
    assert loaded is None and issues, f"the loader accepts: {name}"


ACCEPTED = {
    "absolute times": lambda d: d["events"][0].update(at="2025-11-21T10:00:00Z"),
    "a date": lambda d: d["customers"][0].update(created_at="2025-06-01"),
    "run as a mapping": lambda d: d["tests"][0]["steps"].append({"run": None}),
    "settings everywhere": lambda d: (d.update(settings={"caps": {"email": "2/7d"}}),
                                      d["tests"][0].update(settings={
                                          "quiet_hours": {"email": "21:00-08:00"},
                                          "timezone": "Europe/Oslo"})),
    "null clause": lambda d: d["tests"][0]["steps"][2]["expect"].update(
        not_entered={"ana": None}),
    "payload fields": lambda d: d["tests"][0]["steps"][2]["expect"].update(
        due=[{"task": {"customer": "ana", "title": "Call", "at": "+2d"}}],
        capped=[{"email": {"customer": "ana", "reason": "cap"}}]),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_schema_accepts_what_the_loader_accepts(name: str, tmp_path: Path,
                                                validator: jsonschema.Draft202012Validator
                                                ) -> None:
    data = _with(ACCEPTED[name])
    path = tmp_path / "good.test.yaml"
    path.write_text(json.dumps(data))
    loaded, issues = load_test_file(path, connector_kinds=connector_names())
    assert issues == [] and loaded is not None
    assert errors(validator, data) == []


def test_init_scaffolds_a_test_that_passes(tmp_path: Path, cli: Cli,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "shop"
    code, _, _ = cli(["init", str(project)])
    assert code == 0
    tests = project / "playbooks" / "tests"
    assert (tests / TEST_SCHEMA_FILE).read_text() == playtest_schema_text()
    assert (tests / "example.test.yaml").read_text() == EXAMPLE_TEST
    code, out, err = cli(["test", str(project / "playbooks"), "--json"])
    result = json.loads(out)
    assert (code, err, result["issues"]) == (0, "", [])
    assert [t["outcome"] for t in result["tests"]] == ["passed", "passed"]
    # The tests are not loaded as playbooks, and `retain test` finds them by default.
    monkeypatch.chdir(project)
    code, out, err = cli(["validate"])
    assert (code, err) == (0, ""), err
    assert out.startswith("OK: 1 playbook valid")
    code, out, _ = cli(["test"])
    assert code == 0 and "2 passed" in out


def test_an_init_test_fails_when_the_playbook_is_wrong(tmp_path: Path, cli: Cli) -> None:
    """The scaffolded test can fail: a threshold changed in the playbook shows in its diff."""
    cli(["init", str(tmp_path)])
    playbook = tmp_path / "playbooks" / "winback-30d.yaml"
    playbook.write_text(playbook.read_text().replace("gt: 100", "gt: 200"))
    code, out, _ = cli(["test", str(tmp_path / "playbooks")])
    assert code == 1
    assert "example.test.yaml:22:" in out and "expect.entered" in out
    assert "wanted: ana" in out and "total_spent" in out


def test_the_documented_worked_example_passes(tmp_path: Path, cli: Cli,
                                              validator: jsonschema.Draft202012Validator) -> None:
    """docs/PLAYBOOKS.md's worked example is a test that passes on `retain init`'s playbook."""
    import re

    reference = (REPO / "docs" / "PLAYBOOKS.md").read_text(encoding="utf-8")
    section = reference.split("### A worked example", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    cli(["init", str(tmp_path)])
    path = tmp_path / "playbooks" / "tests" / "example.test.yaml"
    path.write_text(block.group(1))
    document, _ = load_yaml_file(path)
    assert document is not None and errors(validator, document.data) == []
    code, out, _ = cli(["test", str(path)])
    assert code == 0 and "2 passed" in out, out


def test_an_unknown_key_in_a_test_names_the_keys_of_a_test(tmp_path: Path) -> None:
    """The loader's hint for a key inside a list item (`tests[0]`) names that item's keys."""
    path = tmp_path / "bad.test.yaml"
    path.write_text("playbooks: [x]\ntests:\n  - name: x\n    stepz: [run]\n"
                    "  - name: y\n    steps: [run]\n    zzz: 1\n")
    _, issues = load_test_file(path)
    messages = [str(issue) for issue in issues]
    assert any("unknown key 'stepz' (did you mean 'steps'?)" in m for m in messages), messages
    assert any("unknown key 'zzz' (expected one of: name, customers, events, settings, steps)"
               in m for m in messages), messages
