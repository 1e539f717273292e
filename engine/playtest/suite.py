"""A run of `retain test`: find the test files, load their playbooks once per folder, check
every file, then run each selected test in a store of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import Issue, Location
from engine.format.playbook import Playbook
from engine.format.registry import connector_names
from engine.playtest.load import TestFileLoaded, discover_tests, load_test_file, playbook_folder
from engine.playtest.run import Result, Stores, cases_selected, run_case


@dataclass
class SuiteResult:
    """Every test's result, and the problems that kept files from running."""

    results: list[Result] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues and all(r.outcome == "passed" for r in self.results)


def load_suite(paths: Iterable[Path]) -> tuple[list[TestFileLoaded], dict[Path, dict[str, Playbook]],
                                             list[Issue]]:
    """The test files under `paths`, checked, and the valid playbooks of their folders."""
    from engine.errors import PlaybookError
    from engine.query.checks import load_valid_playbooks

    files, issues = discover_tests(paths)
    if not files and not issues:
        issues.append(Issue(Location(", ".join(str(p) for p in paths)), "",
                            "no test files (*.test.yaml) here"))
    folders: dict[Path, dict[str, Playbook]] = {}
    broken: set[Path] = set()  # folders whose playbooks did not load (their issues say why)
    for path in files:
        folder = playbook_folder(path)
        if folder in folders:
            continue
        try:
            folders[folder] = {p.id: p for p in load_valid_playbooks([folder])}
        except PlaybookError as exc:
            folders[folder] = {}
            broken.add(folder)
            issues += exc.issues
    kinds = connector_names()
    loaded: list[TestFileLoaded] = []
    ids = {folder: set(found) for folder, found in folders.items() if folder not in broken}
    for path in files:
        test_file, found = load_test_file(path, ids, kinds)
        issues += found
        if test_file is not None and test_file.playbook_folder not in broken:
            loaded.append(test_file)
    return loaded, folders, issues


def run_suite(paths: Iterable[Path], stores: Stores, pattern: str | None = None,
              progress: Callable[[Result], None] | None = None) -> SuiteResult:
    """Load and run; a file with problems runs none of its tests (its issues say why)."""
    loaded, folders, issues = load_suite(list(paths))
    suite = SuiteResult(issues=issues)
    for test_file in loaded:
        for case in cases_selected(test_file.cases, pattern):
            result = run_case(test_file, case, folders[test_file.playbook_folder], stores)
            suite.results.append(result)
            if progress is not None:
                progress(result)
    return suite
