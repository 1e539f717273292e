"""`retain test`: run the playbook tests (`*.test.yaml`) on fresh stores and a simulated clock.

Prints like pytest: a mark per test, then each failure with the file:line:col of the
expectation and what was wanted beside what happened; exit 0 when every test passes, 1
otherwise (a failing test, or a test file with problems).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from cli import render
from cli.playbooks import JsonOpt, issue_json
from engine.config import load_settings
from engine.errors import InputError
from engine.playtest.run import Result
from engine.playtest.suite import SuiteResult, run_suite

MARKS = {"passed": ".", "failed": "F", "error": "E"}

TestPathsArg = Annotated[list[Path] | None, typer.Argument(
    help="Test files or folders (default: the project's playbooks folder, searched "
         "recursively for *.test.yaml).", show_default=False)]


def test(
    paths: TestPathsArg = None,
    pattern: Annotated[str | None, typer.Option(
        "-k", help="Run only the tests whose name contains this text.", metavar="PATTERN",
        show_default=False)] = None,
    as_json: JsonOpt = False,
    junit_xml: Annotated[Path | None, typer.Option(
        "--junit-xml", help="Also write the results as JUnit XML to this file.",
        metavar="FILE", show_default=False)] = None,
    on: Annotated[str | None, typer.Option(
        "--on", help="Run the tests on this PostgreSQL server instead (postgresql://...), "
                     "each in a schema of its own.", metavar="URL", show_default=False)] = None,
) -> None:
    """Run playbook tests (*.test.yaml): made-up customers and a simulated clock, through the
    same code as `retain run`; nothing is sent.

    Each test runs in a fresh store of its own; the network connectors record instead of
    sending."""
    folders = paths or [Path(load_settings().playbooks_dir)]
    started = time.perf_counter()
    with _stores(on) as stores:
        marks = _Marks(not as_json)
        suite = run_suite(folders, stores, pattern, progress=marks.add)
        marks.end()
    seconds = time.perf_counter() - started
    if junit_xml is not None:
        _write_junit(junit_xml, suite, seconds)
    if as_json:
        render.print_json({"ok": suite.ok, "seconds": round(seconds, 3),
                           "issues": [issue_json(i) for i in suite.issues],
                           "tests": [r.to_json() for r in suite.results]})
    else:
        _print(suite, seconds)
    if not suite.ok:
        raise typer.Exit(1)
    if pattern is not None and not suite.results:  # a typo in -k must not pass a hook
        raise InputError(f"no test's name contains {pattern!r}")


@contextmanager
def _stores(on: str | None) -> Iterator[object]:
    if on is None:
        from engine.playtest.stores import SqliteStores

        sqlite = SqliteStores()
        try:
            yield sqlite.fresh
        finally:
            sqlite.close()
        return
    if not on.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        raise InputError(f"--on takes a PostgreSQL URL (postgresql://...), got {on!r}")
    from engine.playtest.stores import PostgresStores

    postgres = PostgresStores(on)
    try:
        yield postgres.fresh
    finally:
        postgres.close()


class _Marks:
    """A mark per test as it ends, a line per file (text output only)."""

    def __init__(self, show: bool) -> None:
        self.show, self.file, self.width = show, None, 0

    def add(self, result: Result) -> None:
        if not self.show:
            return
        if result.file != self.file:
            if self.file is not None:
                typer.echo("")
            self.file = result.file
            typer.echo(f"{result.file} ", nl=False)
            self.width = len(result.file) + 1
        if self.width >= 79:
            typer.echo("")
            self.width = 0
        typer.echo(MARKS[result.outcome], nl=False)
        self.width += 1

    def end(self) -> None:
        if self.show and self.file is not None:
            typer.echo("")


def _print(suite: SuiteResult, seconds: float) -> None:
    for issue in suite.issues:
        render.error(str(issue))
    for result in suite.results:
        if result.outcome == "passed":
            continue
        typer.echo("")
        typer.echo(f"{result.outcome.upper()} {result.where}: {result.name}")
        if result.error:
            typer.echo(f"  {result.error}")
        for failure in result.failures:
            typer.echo(f"  {failure.where}: {failure.what}")
            for line in failure.lines:
                typer.echo(f"    {line}")
    counts = {outcome: sum(r.outcome == outcome for r in suite.results)
              for outcome in ("passed", "failed", "error")}
    parts = [f"{n} {outcome}" for outcome, n in counts.items() if n]
    if suite.issues:
        parts.append(f"{len(suite.issues)} problem{'s' if len(suite.issues) != 1 else ''} in "
                     "test files")
    typer.echo(f"{', '.join(parts) or 'no tests ran'} in {seconds:.2f}s")


def _write_junit(path: Path, suite: SuiteResult, seconds: float) -> None:
    """JUnit XML as CI servers read it: a testcase per test, a failure's message and text; a
    test file with problems is a testcase in error."""
    from xml.etree import ElementTree as ET

    root = ET.Element("testsuites")
    failed = sum(r.outcome == "failed" for r in suite.results)
    errors = sum(r.outcome == "error" for r in suite.results) + len(suite.issues)
    box = ET.SubElement(root, "testsuite", name="retain test",
                        tests=str(len(suite.results) + len(suite.issues)),
                        failures=str(failed), errors=str(errors), time=f"{seconds:.3f}")
    for result in suite.results:
        case = ET.SubElement(box, "testcase", classname=result.file, name=result.name,
                             file=result.file, line=result.where.split(":")[1],
                             time=f"{result.seconds:.4f}")
        if result.error:
            ET.SubElement(case, "error", message=result.error).text = result.error
        if result.failures:
            text = "\n".join(f"{f.where}: {f.what}\n" + "\n".join(f"  {line}" for line in f.lines)
                             for f in result.failures)
            ET.SubElement(case, "failure", message=result.failures[0].lines[0]).text = text
    for issue in suite.issues:
        case = ET.SubElement(box, "testcase", classname=issue.location.file or "retain test",
                             name=f"problem at {issue.location}")
        ET.SubElement(case, "error", message=issue.message).text = str(issue)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
