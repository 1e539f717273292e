"""`retain validate`, `retain schema`, `retain init` as a user runs them (in-process)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import Cli

from engine.format.schema import schema_text

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "playbooks"




def test_validate_samples_ok(cli: Cli) -> None:
    code, out, err = cli(["validate", str(REPO / "playbooks")])
    assert (code, err) == (0, "")
    assert out.startswith("OK: 7 playbooks valid (7 files)")


def test_validate_default_path_is_the_projects_playbooks(cli: Cli,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    code, out, _ = cli(["validate"])
    assert code == 0 and out.startswith("OK: 7 playbooks")


def test_validate_bad_exits_1_with_every_issue(cli: Cli,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    code, out, err = cli(["validate", "bad/many-errors.yaml", "good"])
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert lines[0].startswith("bad/many-errors.yaml:3:1: priortiy: unknown key 'priortiy'")
    assert lines[-1] == f"{len(lines) - 1} problem(s) in 1 file(s)"


def test_validate_json(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    code, out, _ = cli(["validate", "--json", "bad/yaml-syntax.yaml"])
    report = json.loads(out)
    assert code == 1 and report["valid"] is False
    assert report["issues"][0]["file"] == "bad/yaml-syntax.yaml"
    assert report["issues"][0]["line"] == 5


def test_schema_prints_the_generated_schema(cli: Cli) -> None:
    code, out, _ = cli(["schema"])
    assert code == 0 and out == schema_text()


def test_init_scaffolds_a_project_that_validates(tmp_path: Path,
                                                 cli: Cli,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "shop"
    code, out, _ = cli(["init", str(project)])
    assert code == 0
    for name in ("retain.toml", "playbooks/winback-30d.yaml", "playbooks/playbook.schema.json",
                 "templates/winback.txt.j2"):
        assert (project / name).is_file(), name
    monkeypatch.chdir(project)
    code, out, err = cli(["validate"])
    assert (code, err) == (0, ""), err
    # A second init keeps the user's files.
    (project / "playbooks" / "winback-30d.yaml").write_text("# mine\n")
    cli(["init", str(project)])
    assert (project / "playbooks" / "winback-30d.yaml").read_text() == "# mine\n"


def test_template_typo_in_an_init_project_is_reported(tmp_path: Path,
                                                      cli: Cli,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cli(["init", str(tmp_path)])
    template = tmp_path / "templates" / "winback.txt.j2"
    template.write_text("Hello {{ custmer.name }}\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["validate"])
    assert code == 1
    assert "custmer" in err and "winback.txt.j2" in err


def test_samples_copied_elsewhere_still_find_their_templates(tmp_path: Path,
                                                             cli: Cli
                                                             ) -> None:
    shutil.copytree(REPO / "playbooks", tmp_path / "pb")
    code, _, err = cli(["validate", str(tmp_path / "pb")])
    assert code == 0, err
