"""Reading a test file: strict YAML, the models of model.py, then every reference checked
(playbooks, customers, connector kinds, times), each problem at its file:line:col.

A file with problems is not run at all, like a playbook with problems is not loaded: every
problem of every file is reported at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.errors import Issue, did_you_mean
from engine.format.durations import parse_duration
from engine.format.playbook import pydantic_problems
from engine.format.validation import TEST_SUFFIX, to_issue
from engine.format.yamlsource import PathKey, SourceMap, load_yaml_file
from engine.playtest.model import (
    ACTION_LISTS,
    RELATIVE,
    STEP_KINDS,
    Expect,
    TestCase,
    TestFile,
    TestSettings,
)


@dataclass(frozen=True)
class Step:
    """One step of a test, with where it is written (`path` in the file's source map)."""

    kind: str  # one of STEP_KINDS
    path: PathKey
    value: Any = None  # advance: timedelta; events/customers: [(path, row)]; expect: Expect


@dataclass(frozen=True)
class Case:
    """One test, ready to run."""

    name: str
    path: PathKey
    customers: list[tuple[PathKey, dict[str, Any]]]
    events: list[tuple[PathKey, dict[str, Any]]]
    settings: TestSettings
    steps: list[Step]


@dataclass
class TestFileLoaded:
    """A parsed test file: its playbooks' folder, the ids it tests, its tests."""

    path: Path
    source_map: SourceMap
    playbook_folder: Path
    playbooks: list[str]
    start: Any
    cases: list[Case] = field(default_factory=list)

    def where(self, path: PathKey, at: str = "value") -> str:
        """`file:line:col` of a place in the file."""
        return str(self.source_map.locate(path, at))


def discover_tests(paths: Iterable[Path]) -> tuple[list[Path], list[Issue]]:
    """Test files named, or found under folders (recursively: `playbooks/tests/...`)."""
    from engine.errors import Location

    files: list[Path] = []
    issues: list[Issue] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob(f"*{TEST_SUFFIX}") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            issues.append(Issue(Location(str(path)), "", "no such file or folder"))
    return files, issues


def playbook_folder(path: Path) -> Path:
    """The playbooks a test file tests: those of its folder, or of the folder above when it
    sits in a `tests` folder (`playbooks/tests/winback.test.yaml` -> `playbooks/`)."""
    folder = path.resolve().parent
    return folder.parent if folder.name == "tests" else folder


def load_test_file(path: Path, playbook_ids: Mapping[Path, set[str]] | None = None,
                   connector_kinds: Iterable[str] = ()) -> tuple[TestFileLoaded | None, list[Issue]]:
    """Parse and check one test file. `playbook_ids`: the valid playbooks of each folder, to
    check the ids named; `connector_kinds`: the installed action kinds."""
    document, issues = load_yaml_file(path)
    if document is None:
        return None, issues
    source_map = document.source_map
    problems: list[tuple[PathKey, str, str]] = []  # (path, message, at)
    try:
        model = TestFile.model_validate(document.data)
    except ValidationError as exc:
        return None, issues + sorted(to_issue(p, source_map)
                                     for p in pydantic_problems(exc, TestFile))
    folder = playbook_folder(path)
    known = (playbook_ids or {}).get(folder)
    if known is not None:
        for index, pid in enumerate(model.playbooks):
            if pid not in known:
                hint = did_you_mean(pid, known) or f" (known: {', '.join(sorted(known)) or 'none'})"
                problems.append((("playbooks", index), f"unknown playbook {pid!r} in "
                                 f"{folder}{hint}", "value"))
    loaded = TestFileLoaded(path, source_map, folder, list(model.playbooks), model.start)
    _check_settings(model.settings, ("settings",), problems)
    base = _rows(model.customers, ("customers",), problems, "customer_id")
    base_events = _rows(model.events, ("events",), problems, "customer_id")
    kinds = set(connector_kinds)
    for index, case in enumerate(model.tests):
        loaded.cases.append(_case(case, ("tests", index), model, base, base_events, kinds,
                                  problems))
    issues += [Issue(source_map.locate(p, at), "", message) for p, message, at in problems]
    # rows of the file are checked with each test: a problem in one is reported once
    return (None if issues else loaded), sorted(set(issues))


def _rows(rows: list[dict[str, Any]], path: PathKey, problems: list[tuple[PathKey, str, str]],
          required: str) -> list[tuple[PathKey, dict[str, Any]]]:
    found = []
    for index, row in enumerate(rows):
        where = (*path, index)
        if not isinstance(row.get(required), str) or not row[required]:
            problems.append((where, f"missing {required!r} (a text)", "value"))
            continue
        found.append((where, row))
    return found


def _case(case: TestCase, path: PathKey, model: TestFile,
          base: list[tuple[PathKey, dict[str, Any]]],
          base_events: list[tuple[PathKey, dict[str, Any]]], kinds: set[str],
          problems: list[tuple[PathKey, str, str]]) -> Case:
    customers = [*base, *_rows(case.customers, (*path, "customers"), problems, "customer_id")]
    events = [*base_events, *_rows(case.events, (*path, "events"), problems, "customer_id")]
    known = {row["customer_id"] for _, row in customers}
    _check_times(customers, events, problems)
    _check_customers(events, known, problems)
    if case.settings is not None:
        _check_settings(case.settings, (*path, "settings"), problems)
    steps: list[Step] = []
    for index, raw in enumerate(case.steps):
        where = (*path, "steps", index)
        step = _step(raw, where, model, kinds, known, problems)
        if step is not None:
            steps.append(step)
    return Case(case.name, path, customers, events, case.settings or model.settings, steps)


def _check_times(customers: list[tuple[PathKey, dict[str, Any]]],
                 events: list[tuple[PathKey, dict[str, Any]]],
                 problems: list[tuple[PathKey, str, str]]) -> None:
    from engine.playtest.model import DEFAULT_START, resolve_time

    for rows, key in ((customers, "created_at"), (events, "at")):
        for where, row in rows:
            if row.get(key) is None:
                continue
            try:
                resolve_time(row[key], DEFAULT_START)
            except ValueError as exc:
                problems.append(((*where, key), str(exc), "value"))


def _check_settings(settings: TestSettings, path: PathKey,
                    problems: list[tuple[PathKey, str, str]]) -> None:
    """A cap, quiet hours or zone the settings model refuses, at its key."""
    from engine.config.model import Settings
    from engine.playtest.run import settings_for

    try:
        settings_for(settings)
    except ValidationError as exc:
        problems += [((*path, *p.path), p.message, p.at) for p in pydantic_problems(exc, Settings)]


def _check_customers(events: list[tuple[PathKey, dict[str, Any]]],
                     known: set[str], problems: list[tuple[PathKey, str, str]]) -> None:
    for where, row in events:
        _known_customer(row["customer_id"], (*where, "customer_id"), known, problems)


def _known_customer(customer_id: Any, where: PathKey, known: set[str],
                    problems: list[tuple[PathKey, str, str]]) -> None:
    if customer_id not in known:
        hint = did_you_mean(str(customer_id), known) or (
            f" (known: {', '.join(sorted(known))})" if known else " (the test has none)")
        problems.append((where, f"unknown customer {customer_id!r}{hint}", "value"))


def _step(raw: Any, where: PathKey, model: TestFile, kinds: set[str], known: set[str],
          problems: list[tuple[PathKey, str, str]]) -> Step | None:
    if raw == "run":
        return Step("run", where)
    if not isinstance(raw, dict) or len(raw) != 1:
        problems.append((where, "a step is `run` or a mapping with one key: "
                         f"{', '.join(STEP_KINDS)}", "value"))
        return None
    (kind, value), = raw.items()
    at = (*where, kind)
    if kind == "run" and value is None:
        return Step("run", at)
    if kind == "advance":
        try:
            return Step("advance", at, parse_duration(str(value)))
        except ValueError as exc:
            problems.append((at, str(exc), "value"))
            return None
    if kind in ("events", "customers"):
        if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
            problems.append((at, f"`{kind}` takes a list of rows (mappings)", "value"))
            return None
        rows = _rows(value, at, problems, "customer_id")
        if kind == "customers":
            known.update(row["customer_id"] for _, row in rows)
            _check_times(rows, [], problems)
        else:
            _check_times([], rows, problems)
            _check_customers(rows, known, problems)
        return Step(kind, at, rows)
    if kind == "unsubscribe":
        if not isinstance(value, str) or "@" not in value:
            problems.append((at, "`unsubscribe` takes an email address", "value"))
            return None
        return Step(kind, at, value)
    if kind == "expect":
        return _expect(value, at, model, kinds, known, problems)
    hint = did_you_mean(str(kind), list(STEP_KINDS)) or f" (expected one of: {', '.join(STEP_KINDS)})"
    problems.append((at, f"unknown step {kind!r}{hint}", "key"))
    return None


def _expect(value: Any, at: PathKey, model: TestFile, kinds: set[str], known: set[str],
            problems: list[tuple[PathKey, str, str]]) -> Step | None:
    try:
        expect = Expect.model_validate(value)
    except ValidationError as exc:
        problems += [((*at, *p.path), p.message, p.at) for p in pydantic_problems(exc, Expect)]
        return None
    if expect.playbook is not None and expect.playbook not in model.playbooks:
        hint = did_you_mean(expect.playbook, model.playbooks) or ""
        problems.append(((*at, "playbook"), f"{expect.playbook!r} is not among this file's "
                         f"playbooks ({', '.join(model.playbooks)}){hint}", "value"))
    elif expect.playbook is None and len(model.playbooks) > 1 and _per_playbook(expect):
        problems.append((at, "this file tests several playbooks: say which with `playbook:`",
                         "value"))
    for key in ("entered", "holdout", "exited", "converted"):
        for index, customer_id in enumerate(getattr(expect, key) or []):
            _known_customer(customer_id, (*at, key, index), known, problems)
    for key in ("not_entered", "enrollments", "customers"):
        for customer_id in getattr(expect, key) or {}:
            _known_customer(customer_id, (*at, key, customer_id), known, problems)
    for key in ACTION_LISTS:
        for index, item in enumerate(getattr(expect, key) or []):
            _action_item(item, (*at, key, index), kinds, known, problems)
    return Step("expect", at, expect)


def _per_playbook(expect: Expect) -> bool:
    """Whether the expectation reads one playbook's results (only `customers` does not)."""
    return any(value is not None for name, value in expect if name not in ("playbook",
                                                                           "customers"))


def _action_item(item: dict[str, dict[str, Any]], where: PathKey, kinds: set[str],
                 known: set[str], problems: list[tuple[PathKey, str, str]]) -> None:
    if len(item) != 1:
        problems.append((where, "an action is one mapping `KIND: {customer: ID, field: value}`,"
                         f" KIND one of {', '.join(sorted(kinds))}", "value"))
        return
    (kind, fields), = item.items()
    if kinds and kind not in kinds:
        hint = did_you_mean(kind, kinds) or f" (known: {', '.join(sorted(kinds))})"
        problems.append(((*where, kind), f"unknown action kind {kind!r}{hint}", "key"))
        return
    if not isinstance(fields, dict) or "customer" not in fields:
        problems.append(((*where, kind), "name the customer: `{customer: ID, ...}`", "value"))
        return
    _known_customer(fields["customer"], (*where, kind, "customer"), known, problems)
    if "at" in fields and not RELATIVE.match(str(fields["at"]).strip()):
        from engine.playtest.model import DEFAULT_START, resolve_time

        try:
            resolve_time(fields["at"], DEFAULT_START)
        except ValueError as exc:
            problems.append(((*where, kind, "at"), str(exc), "value"))
