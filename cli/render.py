"""Terminal output: rich tables and progress bars for people, plain JSON for machines."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


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
    err_console.print(message, markup=False, style="red", soft_wrap=True)


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Any]:
    """A progress bar on an interactive terminal; elsewhere a no-op advance function."""
    if not err_console.is_terminal:
        yield lambda _n=1: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
