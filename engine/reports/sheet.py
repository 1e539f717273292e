"""A report's table as plain data: what `cli/report_tables.py` draws for a terminal.

The engine knows no terminal (docs/ARCHITECTURE.md), but which columns matter most is part of
the report, so each result says it here: a column with `narrow=False` is left out of an
80-column terminal and shown with `--wide`; `wrap=True` marks text that may fold onto more
lines. Cells are plain values: ints get thousands separators when drawn, None an empty cell,
anything else its `str()`. HTML pages (`engine/reports/html.py`) use the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Column:
    """One column: its header, alignment and whether a narrow terminal keeps it."""

    name: str
    left: bool = False  # text left-aligned; numbers (the default) right-aligned
    narrow: bool = True  # False: only with --wide (or in --json / --html)
    wrap: bool = False  # long text that folds onto more lines


@dataclass(frozen=True)
class Sheet:
    """A titled table with an optional caption (definitions, notes) under it."""

    title: str
    columns: list[Column]
    rows: list[list[Any]]
    caption: str | None = None
    notes: list[str] = field(default_factory=list)  # lines that must be read (data gaps)

    @property
    def names(self) -> list[str]:
        """The column headers, for an HTML table."""
        return [c.name for c in self.columns]


def columns(names: list[str], text: int = 1, wide: tuple[str, ...] = (),
            wrap: tuple[str, ...] = ()) -> list[Column]:
    """Columns from headers: the first `text` left-aligned, `wide` ones only with --wide, `wrap`
    ones folding."""
    return [Column(name, left=index < text, narrow=name not in wide, wrap=name in wrap)
            for index, name in enumerate(names)]
