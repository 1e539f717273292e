"""Terminal output: rich tables and progress bars for people, plain JSON for machines."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    console: Console
    err_console: Console


@cache
def _console(stderr: bool) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def __getattr__(name: str) -> Any:
    """`console` and `err_console`, made on first use: a command that prints plain text, or
    only JSON, does not pay for importing rich."""
    if name in ("console", "err_console"):
        return _console(name == "err_console")
    raise AttributeError(f"module 'cli.render' has no attribute {name!r}")


def print_json(data: Any) -> None:
    """One JSON document on stdout, with times and other values as strings."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def write_chunks(chunks: Iterable[str]) -> None:
    """A document streamed to stdout piece by piece (a large plan is never held whole)."""
    write = sys.stdout.write
    for chunk in chunks:
        write(chunk)
    sys.stdout.flush()


def error(message: str) -> None:
    """A problem for the user, on stderr, without rich markup interpretation."""
    _console(True).print(message, markup=False, style="red", soft_wrap=True)


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Any]:
    """A progress bar on an interactive terminal; elsewhere a no-op advance function."""
    if not _console(True).is_terminal:
        yield lambda _n=1: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=_console(True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
