"""Report tables for a terminal: `engine.reports` results (plain `Sheet`s) drawn with rich.

The engine says what each table holds and which columns matter most (`Column.narrow`); this
module decides how that meets a terminal. Without `--wide` the other columns are left out and
every column may fold, so a table fits the console's width (80 columns when not a terminal, or
`COLUMNS`); nothing is ever cut off with an ellipsis. `--wide` shows every column at its natural
width, however wide that is.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.reports.sheet import Sheet


def draw(sheet: Sheet, width: int, wide: bool = False) -> Table:
    """One sheet as a rich Table for a console `width` columns wide (its title on one line)."""
    shown = [i for i, c in enumerate(sheet.columns) if wide or c.narrow]
    table = Table(title=sheet.title, title_justify="left",
                  min_width=len(sheet.title) if wide else min(len(sheet.title), width))
    for i in shown:
        column = sheet.columns[i]
        table.add_column(column.name, justify="left" if column.left else "right",
                         no_wrap=wide and not column.wrap, overflow="fold")
    for row in sheet.rows:
        table.add_row(*(Text(_cell(row[i])) for i in shown))
    return table


def footer(sheet: Sheet) -> list[str]:
    """The lines under a table: its notes first (what must be read), then the caption."""
    return [*(f"Note: {n}." for n in sheet.notes), *([sheet.caption] if sheet.caption else [])]


def print_sheets(console: Console, sheets: list[Sheet], wide: bool = False) -> None:
    """Print each sheet and its footer; with `wide`, as wide as its columns need (the terminal
    may wrap), else folded to the console's width."""
    for sheet in sheets:
        table = draw(sheet, console.width, wide)
        if wide:  # rich never prints wider than its console: draw on one as wide as needed
            needed = console.measure(table, options=console.options.update_width(10_000))
            Console(file=console.file, width=max(console.width, needed.maximum),
                    force_terminal=console.is_terminal, highlight=False).print(table)
        else:
            console.print(table)
        for line in footer(sheet):
            console.print(Text(line))


def _cell(value: Any) -> str:
    """Plain text for a cell: rich markup in data (a customer called `[bold]`) stays text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
