"""What the outbox, tasks and unsubscribe commands share: fixed-width text rows within 80
columns, and one read or one write transaction on the store.

These commands print plain lines, not rich tables: an operator greps them and pastes them into
a ticket, and a fixed layout keeps every row on one line of a standard terminal. Every value is
printed as text (never markup) with line breaks flattened, so an error message from an SMTP
server cannot break the layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import typer

from engine.clock import parse_as_of, utcnow

WIDTH = 80
NONE = "-"
T = TypeVar("T")
Column = tuple[str, int, str]  # (heading, width, "<" or ">")

def read(ctx: typer.Context, query: Callable[[Any], T]) -> T:
    """`query(connection)` on a read-only connection (never migrates, never writes)."""
    from engine.store.open import open_reader

    engine = open_reader(ctx.obj.db_url)
    try:
        with engine.connect() as connection:
            return query(connection)
    finally:
        engine.dispose()


def write(ctx: typer.Context, change: Callable[[Any], T]) -> T:
    """`change(connection)` in one transaction of the writer (which migrates first)."""
    from engine.store.open import open_store

    engine = open_store(ctx.obj.db_url)
    try:
        with engine.begin() as connection:
            return change(connection)
    finally:
        engine.dispose()


def as_of_time(text: str | None) -> datetime:
    """An `--as-of` value, or now; a malformed one is a usage error (exit 2)."""
    if text is None:
        return utcnow()
    try:
        return parse_as_of(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--as-of") from None


def row(values: Sequence[Any], columns: Sequence[Column]) -> str:
    """One line: each value clipped to its column's width and aligned, `-` for nothing."""
    cells = []
    for value, (_, width, align) in zip(values, columns, strict=True):
        text = NONE if value is None or value == "" else one_line(_text(value))
        cells.append(f"{clip(text, width):{align}{width}}")
    return " ".join(cells).rstrip()


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)  # ids stay as typed (no thousands separators): they are pasted back


def clip(text: str, width: int) -> str:
    """`text`, cut to `width` characters with an ellipsis when longer."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def wrapped(text: str, indent: int, first: str = "") -> list[str]:
    """`text` on one line, wrapped to WIDTH under an indent; `first` starts the first line
    (a label padded to the indent). Whole, never clipped: for a detail view."""
    import textwrap

    pad = " " * indent
    return textwrap.wrap(one_line(text), WIDTH, initial_indent=first.ljust(indent) or pad,
                         subsequent_indent=pad, break_on_hyphens=False) or [first.rstrip()]


def one_line(text: str) -> str:
    """Line breaks and tabs as spaces: one value, one line."""
    return " ".join(text.split())


def when(iso_text: str | None, *, seconds: bool = False) -> str | None:
    """`2024-04-02T08:15:00Z` as `2024-04-02 08:15` (or `08:15:00`; headings say UTC)."""
    if iso_text is None:
        return None
    return iso_text[:10] + " " + iso_text[11:19 if seconds else 16]
