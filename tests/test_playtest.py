"""Tests of the tester: `retain test` in-process on the folders of tests/fixtures/playtest/.

A correct playbook passes its test file; a copy broken one way at a time (a wrong condition, a
wrong wait, a missing exit, a cap not applied, a template typo) makes `retain test` exit 1 with
the file:line:col of the expectation that caught it and what was wanted beside what happened.
A test file with a problem is not run and the problem is reported at its file:line:col. Every
place is computed from the fixture's text, not written down here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from conftest import Cli

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "playtest"


# --- helpers ------------------------------------------------------------------------------------


def copy_fixture(name: str, tmp_path: Path) -> Path:
    """A copy of a fixture folder that a test may break."""
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    return folder


def mutate(path: Path, old: str, new: str) -> None:
    """Replace the one occurrence of `old` in a file (the fixture must contain it once)."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {path} exactly once"
    path.write_text(text.replace(old, new))


def place(path: Path, line_text: str, at: str | None = None, nth: int = 0) -> str:
    """`file:line:col` of `at` (default: the first non-blank) on the `nth` line containing
    `line_text`, computed from the file as it is now."""
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1)
             if line_text in line]
    assert len(lines) > nth, f"{line_text!r} is not on {nth + 1} lines of {path}"
    number, line = lines[nth]
    column = line.index(at) + 1 if at is not None else len(line) - len(line.lstrip()) + 1
    return f"{path}:{number}:{column}"


def failure_lines(out: str, where: str, what: str) -> list[str]:
    """The lines under the failure printed as `  WHERE: WHAT` (its wanted/got diff)."""
    lines = out.splitlines()
    header = f"  {where}: {what}"
    assert header in lines, f"no failure {header!r} in:\n{out}"
    found = []
    for line in lines[lines.index(header) + 1:]:
        if not line.startswith("    "):
            break
        found.append(line[4:])
    return found


def run_json(cli: Cli, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = cli(["test", *args, "--json"])
    return code, json.loads(out)


# --- a correct playbook passes ------------------------------------------------------------------


@pytest.mark.parametrize("fixture, count", [("winback", 2), ("capped", 2)])
def test_a_correct_playbook_passes_its_tests(cli: Cli, fixture: str, count: int) -> None:
    code, out, err = cli(["test", str(FIXTURES / fixture)])
    assert (code, err) == (0, "")
    assert f"{count} passed in " in out
    assert "failed" not in out and "FAILED" not in out


# --- each kind of mistake fails, at the expectation's line, with a diff -------------------------

WINBACK_TEST = "tests/winback.test.yaml"
CAPPED_TEST = "tests/capped.test.yaml"

MISTAKES = {
    # kind: (fixture, file broken, old text, new text,
    #        (the test file's line that catches it, its key), the diff, the test that fails)
    "wrong condition": (
        "winback", "winback.yaml", "purchase_count: { gte: 1 }", "purchase_count: { gte: 2 }",
        ("entered: [ana]", "entered"),
        ["wanted: ana", "got:    (none)",
         "ana was kept out by when[1].purchase_count.gte (wanted gte 2, was 1)"],
        "an inactive buyer is emailed, then called a week later"),
    "wrong wait": (
        "winback", "winback.yaml", "wait: 7d", "wait: 3d",
        ("sent: []", "sent"),
        ["sent, not wanted: task to ana (title 'Call Ana')"],
        "an inactive buyer is emailed, then called a week later"),
    "missing exit": (
        "winback", "winback.yaml", "exit_when: { event: purchase }\n", "",
        ("exited: [ana]", "exited"),
        ["wanted: ana", "got:    (none)"],
        "a purchase during the wait ends the enrollment"),
    "cap not applied": (
        "capped", CAPPED_TEST, 'settings:\n  caps: { email: "1/7d" }\n', "",
        ("capped:", "capped"),
        ["wanted, not capped: email to ana"],
        "only the offer's email goes out, the survey's is capped"),
}


@pytest.mark.parametrize("kind", list(MISTAKES))
def test_each_kind_of_mistake_fails_at_the_expectations_line_with_a_diff(
        cli: Cli, tmp_path: Path, kind: str) -> None:
    fixture, broken, old, new, (line_text, key), diff, name = MISTAKES[kind]
    folder = copy_fixture(fixture, tmp_path)
    test_file = folder / (WINBACK_TEST if fixture == "winback" else CAPPED_TEST)
    assert cli(["test", str(folder)])[0] == 0, "the fixture passes before it is broken"
    mutate(folder / broken, old, new)

    code, out, err = cli(["test", str(folder)])

    assert (code, err) == (1, "")
    where = place(test_file, line_text, key)
    assert f"FAILED {place(test_file, f'- name: {name}', 'name')}: {name}" in out
    shown = failure_lines(out, where, f"expect.{key}")
    assert all(line in shown for line in diff), shown


def test_a_wrong_wait_shows_the_enrollment_that_moved_on_too(cli: Cli, tmp_path: Path) -> None:
    """Every unmet key of the failing expectation is shown, each at its own line."""
    folder = copy_fixture("winback", tmp_path)
    mutate(folder / "winback.yaml", "wait: 7d", "wait: 3d")
    code, out, _ = cli(["test", str(folder)])
    test_file = folder / WINBACK_TEST
    where = place(test_file, "enrollments: { ana: waiting }", "ana", nth=1)
    assert code == 1
    assert failure_lines(out, where, "expect.enrollments.ana") == ["wanted: waiting",
                                                                   "got:    completed"]
    assert "1 passed, 1 failed in " in out


def test_a_wrong_reason_shows_the_capped_actions_reason(cli: Cli, tmp_path: Path) -> None:
    """An action that is there but differs is shown field by field, beside what it has."""
    folder = copy_fixture("capped", tmp_path)
    mutate(folder / CAPPED_TEST, "reason: cap }", "reason: quiet hours }")
    code, out, _ = cli(["test", str(folder)])
    shown = failure_lines(out, place(folder / CAPPED_TEST, "capped:", "capped"), "expect.capped")
    assert code == 1
    assert shown[:2] == ["wanted, not capped: email to ana", "  reason: wanted 'quiet hours'"]
    assert shown[2].split() == ["got", "'cap", "email", "1/7d", "reached:", "sent", "or",
                                "planned", "by", "offer", "(priority", "80)'"]


def test_a_wrong_due_time_shows_both_times(cli: Cli, tmp_path: Path) -> None:
    """Quiet hours defer an email to their end in the customer's zone; an expectation of
    another time shows the time wanted and the time it is due, alike."""
    folder = copy_fixture("capped", tmp_path)
    test_file = folder / "tests" / "quiet.test.yaml"
    mutate(test_file, "at: +7h", "at: +8h")
    code, out, _ = cli(["test", str(test_file)])
    assert code == 1
    assert failure_lines(out, place(test_file, "due:", "due"), "expect.due") == [
        "wanted, not due: email to ana",
        "  at: wanted 2026-01-05T18:00:00Z",
        "      got    2026-01-05T17:00:00Z"]


def test_a_row_sync_refuses_fails_the_test_at_the_row(cli: Cli, tmp_path: Path) -> None:
    folder = copy_fixture("winback", tmp_path)
    test_file = folder / WINBACK_TEST
    mutate(test_file, "at: -40d }", "at: -40d, amount: lots }")
    code, out, _ = cli(["test", str(test_file)])
    assert code == 1
    assert "2 failed in " in out  # a file-level row: every test that has it
    assert failure_lines(out, place(test_file, "amount: lots", "{"), "row") == [
        "not synced: bad amount 'lots': not a number"]


TYPOS = {
    # where the typo is: (file, old, new, the line of the problem, where on it, its path)
    "inline subject": ("winback.yaml", '"We miss you, {{ customer.name }}"',
                       '"We miss you, {{ customer.nmae }}"', "subject:", '"We miss',
                       "actions[0].email.subject"),
    "template file": ("templates/winback.txt.j2", "Hello {{ customer.name }}",
                      "Hello {{ customer.nmae }}", "Hello", "nmae", "actions[0].email.template"),
}


@pytest.mark.parametrize("where", list(TYPOS))
def test_a_template_typo_is_a_problem_at_its_place_and_no_test_runs(
        cli: Cli, tmp_path: Path, where: str) -> None:
    broken, old, new, line_text, at, path = TYPOS[where]
    folder = copy_fixture("winback", tmp_path)
    mutate(folder / broken, old, new)

    code, out, err = cli(["test", str(folder)])

    assert code == 1
    assert err.strip().splitlines() == [f"{place(folder / broken, line_text, at)}: {path}: "
                                        "unknown customer field 'nmae' (did you mean 'name'?)"]
    # only that problem: not also "unknown playbook" (it exists, it did not load)
    assert out.startswith("1 problem in test files in ")
    code, result = run_json(cli, str(folder))
    assert (code, result["ok"], result["tests"]) == (1, False, [])


# --- a test file with a problem: file:line:col, exit 1, its tests not run -----------------------

PROBLEMS = {
    # problem: (old, new, (the line of the problem, where on it), what the message says)
    "YAML error": ("tests:\n", "tests:\n\tbroken: 1\n", ("\tbroken", "\t"),
                   ["YAML error", "'\\t'"]),
    "unknown key": ("entered: [ana]", "entred: [ana]", ("entred:", "entred"),
                    ["unknown key 'entred'", "did you mean 'entered'?"]),
    "unknown playbook": ("playbooks: [winback]", "playbooks: [winbak]", ("playbooks:", "winbak"),
                         ["unknown playbook 'winbak'", "did you mean 'winback'?"]),
    "unknown customer in an expectation": ("exited: [ana]", "exited: [anna]",
                                           ("exited:", "anna"),
                                           ["unknown customer 'anna'", "did you mean 'ana'?"]),
    "unknown customer in an action": ("task: { customer: ana", "task: { customer: zed",
                                      ("task:", "zed"), ["unknown customer 'zed'"]),
    "unknown action kind": ("- task: {", "- tsk: {", ("tsk:", "tsk"),
                            ["unknown action kind 'tsk'", "did you mean 'task'?"]),
    "bad relative time": ("at: -45d", "at: -45x", ("at: -45x", "-45x"),
                          ["'-45x' is not a time", "-45d, +2h, now"]),
    "bad time in an action": ("sent: []", "sent: [{email: {customer: ana, at: soon}}]",
                              ("at: soon", "soon"), ["'soon' is not a time"]),
    "bad step": ("advance: 4d", "advnce: 4d", ("advnce:", "advnce"),
                 ["unknown step 'advnce'", "did you mean 'advance'?"]),
    "step that is no step": ("      - run\n      - advance: 1d", "      - walk\n      - advance: 1d",
                             ("- walk", "walk"), ["a step is `run` or a mapping with one key"]),
    "bad duration": ("advance: 4d", "advance: 4x", ("advance: 4x", "4x"),
                     ["malformed duration '4x'"]),
    "unsubscribe without an address": ("advance: 4d", "unsubscribe: ana", ("unsubscribe: ana",
                                       "ana"), ["`unsubscribe` takes an email address"]),
}


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_a_test_file_with_a_problem_is_reported_at_its_place_and_not_run(
        cli: Cli, tmp_path: Path, problem: str) -> None:
    """A broken copy beside the good file: the good one runs, the broken one is not run and
    its one problem is reported once, at its file:line:col."""
    old, new, (line_text, at), words = PROBLEMS[problem]
    folder = copy_fixture("winback", tmp_path)
    broken = folder / "tests" / "broken.test.yaml"
    shutil.copy(folder / WINBACK_TEST, broken)
    mutate(broken, old, new)
    file, line, column = place(broken, line_text, at).rsplit(":", 2)

    code, result = run_json(cli, str(folder))

    assert code == 1 and result["ok"] is False
    assert [(t["file"], t["outcome"]) for t in result["tests"]] == \
        [(str(folder / WINBACK_TEST), "passed")] * 2
    assert len(result["issues"]) == 1, result["issues"]
    issue = result["issues"][0]
    assert (issue["file"], issue["line"], issue["column"]) == (file, int(line), int(column))
    assert all(word in issue["message"] for word in words), issue["message"]

    code, out, err = cli(["test", str(broken)])
    assert code == 1
    assert err.startswith(f"{file}:{line}:{column}: ")
    assert out.startswith("1 problem in test files in ")  # no test ran: no mark, no count


@pytest.mark.parametrize("make, message", [
    (lambda path: None, "no such file or folder"),
    (lambda path: path.mkdir(), "no test files (*.test.yaml) here")])
def test_a_path_with_no_tests_is_a_problem(cli: Cli, tmp_path: Path, make: Any,
                                           message: str) -> None:
    make(tmp_path / "nothing")
    code, out, err = cli(["test", str(tmp_path / "nothing")])
    assert (code, err.strip()) == (1, f"{tmp_path / 'nothing'}: {message}")


def test_an_expectation_before_any_run_fails_at_its_key(cli: Cli, tmp_path: Path) -> None:
    folder = copy_fixture("winback", tmp_path)
    test_file = folder / WINBACK_TEST
    mutate(test_file, "    steps:\n      - run\n      - advance: 1d",
           "    steps:\n      - expect: { exited: [] }\n      - advance: 1d")
    code, out, _ = cli(["test", str(folder)])
    assert code == 1
    where = place(test_file, "- expect: { exited: [] }", "exited")
    assert failure_lines(out, where, "expect.exited") == [
        "no `run` step before this expectation: nothing ran yet"]


# --- options and outputs ------------------------------------------------------------------------


def test_k_selects_tests_by_a_part_of_their_name(cli: Cli) -> None:
    folder = str(FIXTURES / "winback")
    code, result = run_json(cli, folder, "-k", "PURCHASE during")
    assert code == 0
    assert [t["name"] for t in result["tests"]] == ["a purchase during the wait ends the enrollment"]
    code, result = run_json(cli, folder, "-k", "week later")
    assert [t["name"] for t in result["tests"]] == [
        "an inactive buyer is emailed, then called a week later"]
    code, out, err = cli(["test", folder, "-k", "no test is called this"])
    assert "no tests ran" in out
    assert code == 1 and "no test's name contains 'no test is called this'" in err


def test_json_shape(cli: Cli, tmp_path: Path) -> None:
    folder = copy_fixture("winback", tmp_path)
    mutate(folder / "winback.yaml", "wait: 7d", "wait: 3d")
    test_file = folder / WINBACK_TEST

    code, result = run_json(cli, str(folder))

    assert code == 1
    assert set(result) == {"ok", "seconds", "issues", "tests"}
    assert (result["ok"], result["issues"]) == (False, [])
    assert isinstance(result["seconds"], float)
    first, second = result["tests"]
    assert set(first) == {"file", "name", "where", "outcome", "seconds", "error", "failures"}
    assert (first["file"], first["where"], first["outcome"], first["error"]) == (
        str(test_file), place(test_file, "- name: an inactive", "name"), "failed", None)
    assert first["failures"] == [
        {"where": place(test_file, "sent: []", "sent"), "what": "expect.sent",
         "message": "sent, not wanted: task to ana (title 'Call Ana')"},
        {"where": place(test_file, "enrollments: { ana: waiting }", "ana", nth=1),
         "what": "expect.enrollments.ana", "message": "wanted: waiting\ngot:    completed"}]
    assert (second["outcome"], second["failures"]) == ("passed", [])


def test_junit_xml_is_valid_and_holds_failures_and_problems(cli: Cli, tmp_path: Path) -> None:
    folder = copy_fixture("winback", tmp_path)
    mutate(folder / "winback.yaml", "wait: 7d", "wait: 3d")
    broken = folder / "tests" / "broken.test.yaml"
    broken.write_text((folder / WINBACK_TEST).read_text().replace("[winback]", "[winbak]"))
    report = tmp_path / "junit.xml"

    code, _, _ = cli(["test", str(folder), "--junit-xml", str(report)])

    assert code == 1
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert {k: suite.get(k) for k in ("tests", "failures", "errors")} == {
        "tests": "3", "failures": "1", "errors": "1"}
    cases = suite.findall("testcase")
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == [
        "an inactive buyer is emailed, then called a week later"]
    failure = failed[0].find("failure")
    assert failure is not None and failure.text is not None
    assert failure.get("message") == "sent, not wanted: task to ana (title 'Call Ana')"
    assert f"{place(folder / WINBACK_TEST, 'sent: []', 'sent')}: expect.sent" in failure.text
    assert failed[0].get("line") == place(folder / WINBACK_TEST, "- name: an inactive").split(
        ":")[1]
    errors = [c.find("error") for c in cases if c.find("error") is not None]
    assert len(errors) == 1 and errors[0] is not None
    assert "unknown playbook 'winbak'" in (errors[0].get("message") or "")
    assert place(broken, "playbooks:", "winbak") in (errors[0].text or "")
    passed = [c for c in cases if len(c) == 0]
    assert [c.get("name") for c in passed] == ["a purchase during the wait ends the enrollment"]


# --- test files are not playbooks; a test never touches the configured database -----------------


def test_a_test_file_beside_playbooks_is_not_loaded_as_a_playbook(cli: Cli,
                                                                 tmp_path: Path) -> None:
    folder = copy_fixture("winback", tmp_path)
    (folder / WINBACK_TEST).rename(folder / "winback.test.yaml")
    (folder / "tests").rmdir()

    code, out, err = cli(["validate", str(folder), "--json"])
    result = json.loads(out)
    assert (code, err, result["valid"], result["issues"]) == (0, "", True, [])
    assert (result["files"], result["playbooks"]) == ([str(folder / "winback.yaml")], ["winback"])

    code, result = run_json(cli, str(folder))  # and `retain test` finds it there
    assert (code, [t["file"] for t in result["tests"]]) == (0, [str(folder / "winback.test.yaml")] * 2)


def test_the_configured_database_is_left_untouched(cli: Cli, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in a store of its own, whatever RETAIN_DATABASE_URL says; with no
    PATHS `retain test` searches the configured playbooks folder."""
    folder = copy_fixture("winback", tmp_path)
    database = tmp_path / "configured.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETAIN_DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("RETAIN_PLAYBOOKS_DIR", str(folder))

    code, result = run_json(cli)

    assert (code, [t["outcome"] for t in result["tests"]]) == (0, ["passed", "passed"])
    assert not database.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["winback"]
