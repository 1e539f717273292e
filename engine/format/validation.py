"""Load every playbook in some paths and report every problem, each with file:line:column.

This is what `retain validate` runs, and what dry-run and run load through, so a playbook that
validates is exactly a playbook the engine will accept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from engine.errors import Issue, Location, PlaybookError, Problem
from engine.format.fields import CUSTOMER_FIELDS
from engine.format.playbook import (
    ActionStep,
    Playbook,
    Step,
    content_version,
    parse_playbook,
    parse_steps,
)
from engine.format.registry import load_connectors
from engine.format.template_checks import TemplateChecker
from engine.format.templates import make_environment
from engine.format.yamlsource import Document, SourceMap, dotted, load_yaml, load_yaml_file

SUFFIXES = (".yaml", ".yml")
TEST_SUFFIX = ".test.yaml"  # a playbook test file (engine/playtest), never a playbook
TEMPLATES_DIR = "templates"
PlaybookCheck = Callable[[Playbook], list[Problem]]  # a last layer, given by a caller


@dataclass
class LoadResult:
    """The playbooks that passed, and every issue found in the files that did not."""

    files: list[Path] = field(default_factory=list)
    playbooks: list[Playbook] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


def discover(paths: list[Path]) -> tuple[list[Path], list[Issue]]:
    """Playbook files named directly or found (not recursively) in the named folders; test
    files (`*.test.yaml`, engine/playtest) are never playbooks, even beside them."""
    files: list[Path] = []
    issues: list[Issue] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file()
                           and not p.name.endswith(TEST_SUFFIX))
            if not found:
                issues.append(Issue(Location(str(path)), "", "no playbook files (*.yaml) here"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            issues.append(Issue(Location(str(path)), "", "no such file or folder"))
    return files, issues


def to_issue(problem: Problem, source_map: SourceMap) -> Issue:
    """Place a path-addressed problem at its key's or value's file:line:column.

    A problem inside a template file already knows its own file and line.
    """
    if problem.location is not None:
        return Issue(problem.location, dotted(problem.path), problem.message)
    location = source_map.locate(problem.path, problem.at)
    if problem.line_offset:
        location = source_map.locate_line(problem.path, problem.line_offset)
    return Issue(location, dotted(problem.path), problem.message)


def locate(playbook: Playbook, problem: Problem) -> Issue:
    """A problem found after loading (a warning against the synced data) at file:line:column."""
    return to_issue(problem, playbook.source_map or SourceMap(playbook.file))


def templates_dir(playbook_file: Path) -> Path | None:
    """`templates/` beside the playbook files, or beside their folder (the `retain init` layout)."""
    for folder in (playbook_file.parent, playbook_file.parent.parent):
        if (folder / TEMPLATES_DIR).is_dir():
            return folder / TEMPLATES_DIR
    return None


def template_checker(file: Path, env: Mapping[str, str]) -> TemplateChecker:
    """The checker of one playbook file's templates (its folder, the customer fields)."""
    return TemplateChecker(make_environment(templates_dir(file)),
                           {name: str(kind) for name, kind in CUSTOMER_FIELDS.items()}, env)


def check_templates(steps: Sequence[Step], file: Path, connectors: Mapping[str, Any],
                    env: Mapping[str, str], checker: TemplateChecker | None = None
                    ) -> list[Problem]:
    """Each action's semantic checks, templates included, with paths from the document root.

    Run on every action that parsed, even when another part of the file is wrong, so a schema
    error in one key does not hide the template errors elsewhere.
    """
    checker = checker or template_checker(file, env)
    problems: list[Problem] = []
    for step in steps:
        if not isinstance(step, ActionStep):
            continue
        prefix = (*step.path, step.kind)
        for problem in connectors[step.kind]().check(step.params, checker):
            problems.append(replace(problem, path=(*prefix, *problem.path)))
    return problems


def load_file(path: Path, connectors: Mapping[str, Any], env: Mapping[str, str],
              checks: Sequence[PlaybookCheck] = ()
              ) -> tuple[Playbook | None, Document | None, list[Issue]]:
    """One file through every layer; the playbook is None when anything is wrong.

    `checks` are the last layers, run on a playbook that parsed (templates may still be wrong):
    engine/query/checks.py adds "compiles for both databases" there, since format may not
    import the statement building of query.
    """
    document, issues = load_yaml_file(path)
    if document is None:
        return None, None, issues
    playbook, problems = parse_playbook(document.data, document.text, str(path), dict(connectors))
    steps = playbook.steps if playbook is not None else (
        parse_steps(document.data, dict(connectors))[0] if isinstance(document.data, dict) else ())
    checker = template_checker(path, env)
    problems += check_templates(steps, path, connectors, env, checker)
    if playbook is not None:
        playbook = with_templates(playbook, document.data, used_templates(checker))
        for check in checks:
            problems += check(playbook)
    issues += [to_issue(problem, document.source_map) for problem in problems]
    if issues or playbook is None:
        return None, document, issues
    return replace(playbook, source_map=document.source_map), document, issues


def used_templates(checker: TemplateChecker) -> dict[str, str]:
    """name -> text of every template file the actions use: the ones their checks read, and
    the files those include, extend or import by a literal name (found in the parsed template,
    so a branch the trial render did not take still counts). Read through the folder's loader,
    which refuses names outside the folder (`../`). Files that cannot be read are left out:
    their check has already reported them."""
    environment = checker.environment
    loader = environment.loader
    found: dict[str, str] = {}
    pending = list(checker.files_checked)
    while pending and loader is not None:
        name = pending.pop(0)
        if name in found:
            continue
        try:
            found[name] = text = loader.get_source(environment, name)[0]
            referenced = meta.find_referenced_templates(environment.parse(text))
        except (OSError, UnicodeDecodeError, jinja2.TemplateError):
            continue
        pending += [other for other in referenced if other is not None]
    return dict(sorted(found.items()))


def with_templates(playbook: Playbook, data: Any, templates: Mapping[str, str]) -> Playbook:
    """The playbook (parsed from `data`) with the texts of its template files, and the version
    that covers both."""
    return replace(playbook, templates=dict(templates),
                   version=content_version(data, templates))


def load_stored(text: str, label: str, templates: Mapping[str, str],
                connectors: Mapping[str, Any], checks: Sequence[PlaybookCheck] = ()
                ) -> tuple[Playbook | None, list[Issue]]:
    """A recorded version's source parsed as a file is (strict YAML, the document's shape, the
    same registries, the `checks`), with its recorded template texts; `label` stands for the
    file in messages. Its templates are not checked again: they passed when the version was
    recorded (only valid playbooks are), an enrollment in flight must not stop because a check
    grew stricter since, and a template that fails for a customer still fails that action
    alone when it is planned."""
    document, issues = load_yaml(text, label)
    if document is None:
        return None, issues
    playbook, problems = parse_playbook(document.data, text, label, dict(connectors))
    if playbook is not None:
        for check in checks:
            problems += check(playbook)
    issues += [to_issue(problem, document.source_map) for problem in problems]
    if issues or playbook is None:
        return None, issues
    playbook = with_templates(playbook, document.data, templates)
    return replace(playbook, source_map=document.source_map), []


def load_playbooks(paths: list[Path], env: Mapping[str, str] | None = None,
                   connectors: Mapping[str, Any] | None = None,
                   checks: Sequence[PlaybookCheck] = ()) -> LoadResult:
    """Load and validate every playbook under `paths`; ids must be unique across files."""
    env = dict(os.environ) if env is None else env
    connectors = load_connectors() if connectors is None else connectors
    files, issues = discover(paths)
    result = LoadResult(files=files, issues=issues)
    first_file: dict[str, str] = {}
    for path in files:
        playbook, document, found = load_file(path, connectors, env, checks)
        result.issues += found
        pid = document.data.get("id") if document and isinstance(document.data, dict) else None
        if isinstance(pid, str) and pid in first_file:
            location = document.source_map.locate(("id",))  # type: ignore[union-attr]
            result.issues.append(Issue(location, "id", f"duplicate playbook id {pid!r} "
                                       f"(also in {first_file[pid]})"))
            continue
        if isinstance(pid, str):
            first_file[pid] = str(path)
        if playbook is not None and not found:
            result.playbooks.append(playbook)
    result.issues.sort()
    return result


def load_valid_playbooks(paths: list[Path], env: Mapping[str, str] | None = None,
                         checks: Sequence[PlaybookCheck] = ()) -> list[Playbook]:
    """The playbooks under `paths`, or PlaybookError listing every issue in every file."""
    result = load_playbooks(paths, env, checks=checks)
    if result.issues:
        count = len(result.issues)
        raise PlaybookError(f"{count} problem{'s' if count != 1 else ''} found", result.issues)
    return result.playbooks
